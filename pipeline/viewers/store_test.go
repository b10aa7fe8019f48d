package viewers_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/viewers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// showStore opens pipeline show's bucket on a new JetStream server, with
// a context that ends with the test (20 s at most).
func showStore(t *testing.T) (*nats.Conn, context.Context, *viewers.Store) {
	t.Helper()
	nc := e2e.JetStreamConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	st, err := viewers.Open(ctx, nc, "show")
	if err != nil {
		t.Fatal(err)
	}
	return nc, ctx, st
}

// TestStore: profiles put by one client are seen by a watcher (those
// there at the start, then each change), listed with the manifest, and a
// profile stored under another viewer's key, or one that does not
// decode, reaches the watcher as an error naming the viewer.
func TestStore(t *testing.T) {
	nc := e2e.JetStreamConn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := viewers.Attach(ctx, nc, "show"); err == nil {
		t.Fatal("Attach found a bucket nobody made")
	}
	st, err := viewers.Open(ctx, nc, "show")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, &viewers.Profile{ID: "alice", Name: "Alice", Layout: viewers.LayoutVertical}); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, &viewers.Profile{ID: "bad id"}); !errors.Is(err, viewers.ErrProfile) {
		t.Fatalf("Put of a bad id: %v, want ErrProfile", err)
	}
	wctx, stop := context.WithCancel(ctx)
	changes, initial, err := st.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	next := func() viewers.Change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-ctx.Done():
			t.Fatal("no change came")
		}
		return viewers.Change{}
	}
	if c := next(); c.ID != "alice" || c.Profile == nil || c.Profile.Name != "Alice" {
		t.Fatalf("first change %+v, want alice's profile", c)
	}
	<-initial
	js := e2e.JetStream(t, nc.ConnectedUrl())
	kv, err := js.KeyValue(ctx, viewers.Bucket("show"))
	if err != nil {
		t.Fatal(err)
	}
	forged := []struct{ key, value, want string }{
		{viewers.ProfileKey("mallory"), `{"id":"alice","layout":"square"}`, `stored under "mallory"`},
		{viewers.ProfileKey("eve"), `{"id":"eve","colour":"red"}`, `unknown field "colour"`},
		{viewers.ProfileKey("trent"), `not json`, "invalid character"},
	}
	for _, f := range forged {
		if _, err := kv.Put(ctx, f.key, []byte(f.value)); err != nil {
			t.Fatal(err)
		}
		c := next()
		if c.Profile != nil || c.Err == nil || !errors.Is(c.Err, viewers.ErrProfile) || !strings.Contains(c.Err.Error(), f.want) {
			t.Errorf("%s: change %+v, want an ErrProfile with %q", f.key, c, f.want)
		}
	}
	if err := st.Delete(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.ID != "alice" || !c.Removed {
		t.Fatalf("change %+v, want alice removed", c)
	}
	if err := st.Delete(ctx, "alice"); !errors.Is(err, viewers.ErrNoViewer) {
		t.Fatalf("second Delete: %v, want ErrNoViewer", err)
	}
	if _, err := st.SetEntry(ctx, viewers.Entry{Viewer: "bob", Variant: "square-1", Playlist: "out/show/square-1/index.m3u8", State: viewers.StateLive}); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, &viewers.Profile{ID: "bob"}); err != nil {
		t.Fatal(err)
	}
	l, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Profiles) != 1 || l.Profiles[0].ID != "bob" || len(l.Bad) != 3 || l.Manifest["bob"].Variant != "square-1" {
		t.Fatalf("listing %+v, want bob's profile and entry and 3 bad profiles", l)
	}
	stop()
	for range changes { // closed once the watch stops
	}
}

// TestBucketMadeAgainLoose: a client deletes the pipeline's bucket and
// makes it again without its bounds (values and size of any size, a
// history). Alive says so, and Recreate (what the stage does then) puts
// the bounds back: a value above MaxValue is refused again. One that
// cannot be bounded in place (file storage) is an error naming the
// bucket. (The stage took such a bucket as it found it.)
func TestBucketMadeAgainLoose(t *testing.T) {
	nc, ctx, st := showStore(t)
	if err := st.Alive(ctx); err != nil {
		t.Fatalf("Alive of the bucket as made: %v", err)
	}
	js := e2e.JetStream(t, nc.ConnectedUrl())
	remake := func(storage jetstream.StorageType) {
		t.Helper()
		if err := js.DeleteKeyValue(ctx, viewers.Bucket("show")); err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: viewers.Bucket("show"), History: 5, Storage: storage}); err != nil {
			t.Fatal(err)
		}
	}
	remake(jetstream.MemoryStorage)
	if err := st.Alive(ctx); !errors.Is(err, viewers.ErrStore) || !strings.Contains(err.Error(), "other settings") {
		t.Fatalf("Alive of a bucket made again without bounds: %v, want ErrStore saying so", err)
	}
	if err := st.Recreate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Alive(ctx); err != nil {
		t.Fatalf("Alive after Recreate: %v", err)
	}
	kv, err := js.KeyValue(ctx, viewers.Bucket("show"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, viewers.ProfileKey("big"), make([]byte, viewers.MaxValue+1)); err == nil {
		t.Error("the bucket took a value above MaxValue after Recreate")
	}
	remake(jetstream.FileStorage)
	if err := st.Recreate(ctx); !errors.Is(err, viewers.ErrStore) || !strings.Contains(err.Error(), viewers.Bucket("show")) {
		t.Fatalf("Recreate over a file-storage bucket: %v, want ErrStore naming the bucket", err)
	}
}

// TestPutBack: in a bucket made again, PutBack stores a profile whose key
// nobody has written there, and leaves alone one a client wrote or
// removed meanwhile (a Put would have brought the removed viewer back and
// undone the change); in the bucket it came from, it stores nothing.
func TestPutBack(t *testing.T) {
	nc, ctx, st := showStore(t)
	known := map[string]*viewers.Profile{}
	for _, id := range []string{"alice", "bob", "carol"} {
		known[id] = &viewers.Profile{ID: id, Layout: viewers.LayoutVertical}
		if err := st.Put(ctx, known[id]); err != nil {
			t.Fatal(err)
		}
	}
	for id, p := range known {
		if put, err := st.PutBack(ctx, p); err != nil || put {
			t.Errorf("PutBack(%s) in the bucket it is in: %v, %v; want false, nil", id, put, err)
		}
	}
	js := e2e.JetStream(t, nc.ConnectedUrl())
	if err := js.DeleteKeyValue(ctx, viewers.Bucket("show")); err != nil {
		t.Fatal(err)
	}
	if err := st.Recreate(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, viewers.Bucket("show"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, viewers.ProfileKey("bob"), []byte(`{"id":"bob","layout":"square"}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, viewers.ProfileKey("carol")); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"alice": true, "bob": false, "carol": false}
	for id, p := range known {
		if put, err := st.PutBack(ctx, p); err != nil || put != want[id] {
			t.Errorf("PutBack(%s) in the bucket made again: %v, %v; want %v, nil", id, put, err, want[id])
		}
	}
	l, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	layouts := map[string]string{}
	for _, p := range l.Profiles {
		layouts[p.ID] = p.Layout
	}
	if len(layouts) != 2 || layouts["alice"] != viewers.LayoutVertical || layouts["bob"] != viewers.LayoutSquare {
		t.Fatalf("profiles %v, want alice's put back, bob's as the client wrote it, carol's removed", layouts)
	}
}

// TestOpenAsksAgainWhenUnanswered: a JetStream API request that no server
// answers (a cluster electing its meta leader drops them: a personalise
// stage started with a fresh 3-node cluster failed with "context
// deadline exceeded" after its whole 10 s) is asked again. Here a
// responder drops the first request and answers the next one "stream not
// found": Attach says there is no bucket, well before its deadline.
func TestOpenAsksAgainWhenUnanswered(t *testing.T) {
	nc, asked := e2e.FakeJetStreamAPI(t, "$JS.API.>", func(n int32) []byte {
		if n == 1 {
			return nil // dropped, as by a cluster without a leader
		}
		return []byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err := viewers.Attach(ctx, nc, "show")
	if err == nil || !strings.Contains(err.Error(), "no bucket") {
		t.Fatalf("Attach: %v, want the bucket not found", err)
	}
	if took := time.Since(t0); took > 8*time.Second || asked.Load() < 2 {
		t.Errorf("answered after %s and %d requests, want a second request well within the 10 s", took, asked.Load())
	}
}
