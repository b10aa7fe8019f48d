package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats.go/jetstream"
)

// TestCreateJobStreamAsksAgainWhileTheOldOneGoes: a job stream made right
// after the stale one an earlier run left was deleted got "error creating
// store for stream" (10049) once under load (TestJobServeOutlivesAStaleStream
// in make test) while the server still removed the old files. Here a
// responder answers the first create so and the next one with the stream:
// the stream is made.
func TestCreateJobStreamAsksAgainWhileTheOldOneGoes(t *testing.T) {
	nc, asked := e2e.FakeJetStreamAPI(t, "$JS.API.STREAM.CREATE.>", func(n int32) []byte {
		if n == 1 {
			return []byte(`{"type":"io.nats.jetstream.api.v1.stream_create_response","error":{"code":500,"err_code":10049,"description":"error creating store for stream"}}`)
		}
		return []byte(`{"type":"io.nats.jetstream.api.v1.stream_create_response","config":{"name":"AVFLOW_t","subjects":["x"]},"created":"2026-12-03T00:00:00Z","state":{}}`)
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := createJobStream(ctx, js, jetstream.StreamConfig{Name: "AVFLOW_t", Subjects: []string{"x"}}); err != nil {
		t.Fatalf("createJobStream: %v (after %d requests)", err, asked.Load())
	}
	if asked.Load() != 2 {
		t.Errorf("%d create requests, want 2", asked.Load())
	}
}
