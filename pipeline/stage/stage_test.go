package stage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// media is a Local that counts its references, and may live on a "device".
type media struct {
	data   []byte
	refs   *int
	onGPU  bool
	hosted *int
}

func newMedia(b []byte, gpu bool) *media {
	refs, hosted := 1, 0
	return &media{data: b, refs: &refs, onGPU: gpu, hosted: &hosted}
}

func (m *media) PayloadSize() (int, error) { return len(m.data), nil }
func (m *media) WritePayload(dst []byte) error {
	if m.onGPU {
		return errors.New("still on the device")
	}
	copy(dst, m.data)
	return nil
}
func (m *media) Clone() (stage.Local, error) {
	*m.refs++
	return &media{data: m.data, refs: m.refs, hosted: m.hosted}, nil
}
func (m *media) Free() { *m.refs-- }
func (m *media) ToHost(msg *stage.Msg) error {
	if m.onGPU {
		m.onGPU = false
		*m.hosted++
		msg.Video.PixFmt = "nv12"
	}
	return nil
}

func frame(l stage.Local) *stage.Msg {
	return stage.New(envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaVideo,
		Video: &envelope.VideoFormat{PixFmt: "cuda", Width: 2, Height: 2}, Stamps: []envelope.Stamp{{Stage: "src", At: 1}}}, l)
}

func TestAckRunsOnce(t *testing.T) {
	m := frame(nil)
	m.Ack() // no hook: nothing
	n := 0
	m.SetAck(func() { n++ })
	m.Ack()
	m.Ack()
	if n != 1 {
		t.Fatalf("the ack hook ran %d times, want once", n)
	}
	m.SetAck(func() { n++ })
	m.Pass().Ack()
	if n != 1 {
		t.Fatal("a passed-on copy ran its original's ack hook")
	}
	m.SetAck(func() { n++ })
	cp, err := m.Clone()
	if err != nil {
		t.Fatal(err)
	}
	cp.Ack()
	if n != 1 {
		t.Fatal("a clone ran its original's ack hook")
	}
}

func TestCloneAndPass(t *testing.T) {
	l := newMedia([]byte{1, 2, 3, 4, 5, 6}, false)
	m := frame(l)
	m.Port, m.Input = "meta", 2
	cp, err := m.Clone()
	if err != nil {
		t.Fatal(err)
	}
	if *l.refs != 2 || cp.Local == m.Local {
		t.Fatalf("clone: %d references, same object %v; want its own second reference", *l.refs, cp.Local == m.Local)
	}
	cp.Stamps[0].Stage = "changed"
	if m.Stamps[0].Stage != "src" {
		t.Fatal("a clone's stamps share the original's array")
	}
	if cp.Port != "meta" || cp.Input != 2 {
		t.Fatalf("clone lost port or input: %q %d", cp.Port, cp.Input)
	}
	cp.Release()
	cp.Release() // twice is harmless
	p := m.Pass()
	if m.Local != nil || p.Local == nil || p.Port != "" {
		t.Fatalf("pass: original keeps %v, copy %v, port %q; want the copy to take the media, port cleared", m.Local, p.Local, p.Port)
	}
	m.Release() // frees nothing: the copy owns it
	if *l.refs != 1 {
		t.Fatalf("%d references after releasing the original, want the copy's 1", *l.refs)
	}
	p.Release()
	if *l.refs != 0 {
		t.Fatalf("%d references left", *l.refs)
	}
}

// TestMarshalLocal: in-process media is brought off the device, written
// into the message and released; the wire bytes equal those of the same
// envelope with the payload in place.
func TestMarshalLocal(t *testing.T) {
	data := []byte("yuvyuv")
	l := newMedia(data, true)
	m := frame(l)
	got, err := stage.AppendMarshal(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if *l.hosted != 1 || *l.refs != 0 || m.Local != nil {
		t.Fatalf("hosted %d times, %d references left, local %v; want 1, 0, nil", *l.hosted, *l.refs, m.Local)
	}
	want := frame(nil)
	want.Video.PixFmt, want.Payload = "nv12", data
	wb, err := envelope.Marshal(&want.Envelope)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wb) {
		t.Fatalf("wire bytes differ:\n got %x\nwant %x", got, wb)
	}
	back, err := stage.Unmarshal(got)
	if err != nil || !bytes.Equal(back.Payload, data) || back.Video.PixFmt != "nv12" || back.Local != nil {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	bad := frame(newMedia(data, false))
	bad.Local.(*media).onGPU = true
	bad.Local = struct{ stage.Local }{bad.Local} // not a Hoster: stays on the device
	if _, err := stage.AppendMarshal(nil, bad); err == nil || !strings.Contains(err.Error(), "still on the device") {
		t.Fatalf("a payload that cannot be written: %v, want its error", err)
	}
}

// TestContractImportsNoRuntime: the stage contract and the wire format
// build without cgo and import nothing of FFmpeg, ONNX Runtime, NATS or
// the runner.
func TestContractImportsNoRuntime(t *testing.T) {
	for _, pkg := range []string{"github.com/avflow/avflow/pipeline/stage", "github.com/avflow/avflow/pipeline/envelope"} {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if !strings.Contains(dep, ".") || dep == pkg || dep == "github.com/avflow/avflow/pipeline/envelope" ||
				strings.HasPrefix(dep, "github.com/vmihailenco/") {
				continue
			}
			t.Errorf("%s depends on %s", pkg, dep)
		}
	}
}

// counter is a stage that writes only Process; stage.Base gives it the rest.
type counter struct {
	stage.Base
	n int
}

func (c *counter) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	c.n += len(in)
	out := make(stage.Batch, len(in))
	for i, m := range in {
		out[i] = m.Pass()
	}
	return out, nil
}

func Example() {
	var st stage.Stage = &counter{}
	out, _ := st.Process(context.Background(), stage.Batch{frame(nil), frame(nil)})
	rest, _ := st.Flush(context.Background())
	max, _ := st.BatchLimits()
	fmt.Println(len(out), len(rest), max, st.Status().Device == "", st.Close())
	// Output: 2 0 1 true <nil>
}
