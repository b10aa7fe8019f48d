// Package stage is the contract between avflow's runner and its stages:
// the message a stage gets and returns ([Msg], [Batch]) and the interface
// a stage implements ([Stage], with the no-op [Base] to embed). It builds
// without cgo and knows nothing of FFmpeg, GPUs or NATS: FFmpeg frames and
// packets reach it as [Local] objects from package codecs, and the wire
// format is package envelope's alone. How a stage is registered, built
// and configured (Spec, Init, Params) is package pipeline's.
package stage

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
)

// Msg is one message inside a running pipeline: the wire envelope (what
// crosses NATS) and what only this process knows of it: the media it
// holds in memory, the port it goes out on, the input it came in on, and
// its transport's hook for when the stage has taken it.
type Msg struct {
	envelope.Envelope

	// Local, when set, holds the media in process memory (an FFmpeg frame
	// or packet); Payload may then be empty.
	Local Local
	// Port names the producing stage's output port ("" is its first port). Set by stages.
	Port string
	// Input is the index of the consuming stage's input edge it arrived on. Set by the runner.
	Input int

	ack  func()
	done func()
}

// Batch is the unit a stage processes: one or more messages.
type Batch []*Msg

// Local is an in-process object (an FFmpeg frame or packet) that travels
// with a message between stages of one process without being serialised.
// Marshal writes its media straight into the outgoing message.
type Local interface {
	envelope.PayloadWriter
	// Clone returns a new reference to the same data (for fan-out).
	Clone() (Local, error)
	// Free releases this reference.
	Free()
}

// Hoster is a Local that may live in device memory (a GPU frame): ToHost
// brings it to system memory, updating m's format fields, before it is
// serialised. Stages on the same device pass it on without that copy.
type Hoster interface {
	ToHost(m *Msg) error
}

// New returns a message holding the envelope e (copied) and the
// in-process media l (may be nil), owning l.
func New(e envelope.Envelope, l Local) *Msg { return &Msg{Envelope: e, Local: l} }

// EOS returns an end of stream message, on input (for a consumer's queue).
func EOS(input int) *Msg {
	return &Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS}, Input: input}
}

// Release frees the in-process object, if any.
func (m *Msg) Release() {
	if m != nil && m.Local != nil {
		m.Local.Free()
		m.Local = nil
	}
}

// SetAck sets the hook Ack calls: the transport's, to hear that the
// consuming stage has taken the message off its queue (NATS core returns
// a credit to the producer instance that sent it).
func (m *Msg) SetAck(f func()) { m.ack = f }

// Ack runs the transport's hook, once; later calls do nothing. The runner
// calls it when the stage takes the message from its queue.
func (m *Msg) Ack() {
	if f := m.ack; f != nil {
		m.ack = nil
		f()
	}
}

// SetDone sets the hook TakeDone hands out: the transport's, to hear that
// the stage has processed the message and its outputs are published
// (JetStream job delivery acknowledges it then).
func (m *Msg) SetDone(f func()) { m.done = f }

// TakeDone returns the done hook (nil when there is none) and clears it:
// the runner takes it before the stage gets the message and runs it once
// the stage's outputs for it are published.
func (m *Msg) TakeDone() func() {
	f := m.done
	m.done = nil
	return f
}

// Pass returns a copy of m to send on from a stage that lets a message
// through (filters on metadata, drawing in place): the copy takes over the
// in-process media, so releasing m afterwards frees nothing, and its port
// is cleared (the stage's first port).
func (m *Msg) Pass() *Msg {
	cp := *m
	m.Local = nil
	cp.Port, cp.ack, cp.done = "", nil, nil
	return &cp
}

// Clone returns a second message with the same content for another
// consumer: its own reference to the in-process media and its own stamps,
// with no ack hook.
func (m *Msg) Clone() (*Msg, error) {
	cp := *m
	cp.ack, cp.done = nil, nil
	cp.Stamps = slices.Clone(m.Stamps)
	if m.Local != nil {
		l, err := m.Local.Clone()
		if err != nil {
			return nil, err
		}
		cp.Local = l
	}
	return &cp, nil
}

// Unmarshal decodes a message that arrived from outside the process (see
// envelope.Unmarshal); its payload aliases b.
func Unmarshal(b []byte) (*Msg, error) {
	m := new(Msg)
	if err := envelope.UnmarshalInto(b, &m.Envelope); err != nil {
		return nil, err
	}
	return m, nil
}

// AppendMarshal encodes m for the wire, appending to dst. Media in device
// memory is brought to the host first; in-process media is written
// straight into the message (one copy) and released.
func AppendMarshal(dst []byte, m *Msg) ([]byte, error) {
	if m.Local == nil {
		return envelope.AppendMarshal(dst, &m.Envelope)
	}
	if h, ok := m.Local.(Hoster); ok {
		if err := h.ToHost(m); err != nil {
			return nil, fmt.Errorf("stage: copying media off the device failed: %w", err)
		}
	}
	out, err := envelope.AppendMarshalFrom(dst, &m.Envelope, m.Local)
	m.Release()
	return out, err
}

// Stage is a running pipeline stage. Embed [Base] and override what the
// stage needs: most stages write Process and Close.
//
// The runner calls Process with the messages that arrived on the stage's
// inputs and publishes what it returns on the stage's outputs (routed by
// each message's Port). A source is a stage without inputs: the runner
// calls its Process with an empty batch until it returns io.EOF.
//
// The runner owns the input messages: it releases their in-process media
// after Process returns, so a stage that keeps a frame must take its own
// reference. Of a stage's replicas (StageConfig.Replicas), each Process
// call goes to one; EndInput, Flush and Close go to every one; Status
// Counts are summed over all of them, while BatchLimits and Status'
// Device and Total are read from the first. Close is called exactly once
// per replica, after its last Process or Flush.
type Stage interface {
	// Process handles a batch (up to BatchLimits' max messages).
	Process(ctx context.Context, in Batch) (Batch, error)
	// EndInput is called once per input, with its index, when it ends: a
	// muxer stops waiting for a stream that never comes.
	EndInput(ctx context.Context, input int) (Batch, error)
	// Flush is called once, after every input has ended, and returns what
	// the stage held back (decoders, encoders, muxers). A stage finalises
	// its output here: an error or a cancelled run skips Flush and goes
	// straight to Close.
	Flush(ctx context.Context) (Batch, error)
	// Close releases the stage.
	Close() error
	// BatchLimits is read once, before the first Process: the runner
	// passes up to max queued messages at once, waiting at most wait for
	// the batch to fill (dynamic batching for inference).
	BatchLimits() (max int, wait time.Duration)
	// Status is read at every metrics snapshot (the end table,
	// Prometheus, `nats micro stats`) while the stage runs, so it must be
	// safe for concurrent use.
	Status() Status
}

// Status is what a stage reports of itself while it runs.
type Status struct {
	// Device is the device the stage runs on when it is not the one it was
	// bound to (an execution provider that would not load; a hardware
	// encoder that did not open): "" means the bound device.
	Device string
	// Counts are events of the stage's own, beyond the messages the runner
	// counts (damaged packets concealed, malformed detections dropped).
	// Keys are snake_case event names; values only grow.
	Counts map[string]int64
	// Total is the number of video frames a source expects to produce (a
	// file's), read once at the start: the CLI shows progress and an ETA
	// from it. 0: unknown or endless.
	Total int64
}

// Base is the no-op part of a Stage: embed it and write Process and
// whatever else the stage needs. Its EndInput and Flush return nothing,
// Close does nothing, BatchLimits is one message at a time and Status is
// empty. Process has no default: a stage without one does not compile.
type Base struct{}

func (Base) EndInput(context.Context, int) (Batch, error) { return nil, nil }
func (Base) Flush(context.Context) (Batch, error)         { return nil, nil }
func (Base) Close() error                                 { return nil }
func (Base) BatchLimits() (int, time.Duration)            { return 1, 0 }
func (Base) Status() Status                               { return Status{} }
