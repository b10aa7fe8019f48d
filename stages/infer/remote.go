package infer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/stages/infer/inferwire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// What a remote infer stage does with a frame whose answer does not come
// in time (the service is gone or slow): its on_timeout param.
const (
	PolicyHold = "hold" // keep the stream's last boxes (marked kept)
	PolicySkip = "skip" // no boxes
	PolicyFail = "fail" // the stage fails
)

// errServiceStopping is a 503 answer: the instance is stopping, which is
// treated as no answer at all.
var errServiceStopping = errors.New("the service instance is stopping")

// ErrRemote is a remote infer stage's failure: no service, an error reply,
// or (with on_timeout: fail) no answer in time.
var ErrRemote = errors.New("infer remote")

// remote sends a stage's frames, preprocessed here, to the shared
// inference service of its model (package inferwire) and reads the boxes
// back.
type remote struct {
	nc      *nats.Conn
	card    string
	caller  string
	timeout time.Duration
	policy  string
	view    *preprocessor
	thr     float32
	pix     []byte
	last    map[string][]box // stream -> its last boxes (hold)

	sent, timeouts, held, skipped atomic.Int64
	bytes                         atomic.Int64 // request bytes sent
}

// newRemote checks that the service of the stage's model answers.
func newRemote(in pipeline.Init, d *Detector) (*remote, error) {
	card := d.m.card
	svc := inferwire.ServiceName(card.Name)
	if in.Bus == nil {
		return nil, fmt.Errorf("%w: model %s: remote: true asks the service %s on NATS; --transport local has none", ErrRemote, card.Name, svc)
	}
	policy := in.Params.String("on_timeout")
	if policy == "" {
		policy = PolicyFail
		if in.Live {
			policy = PolicyHold
		}
	}
	host, _ := os.Hostname()
	r := &remote{nc: in.Bus, card: card.Name, caller: fmt.Sprintf("%s/%s/%s:%d", in.Pipeline, in.Name, host, os.Getpid()), timeout: in.Params.Duration("timeout"),
		policy: policy, view: d.views[0], thr: d.thr, last: map[string][]box{}}
	if err := r.waitService(in.Params.Duration("service_wait")); err != nil {
		return nil, err
	}
	return r, nil
}

// waitService waits up to wait for an instance of the model's service.
func (r *remote) waitService(wait time.Duration) error {
	svc := inferwire.ServiceName(r.card)
	deadline := time.Now().Add(wait)
	for {
		inbox := r.nc.NewRespInbox()
		sub, err := r.nc.SubscribeSync(inbox)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRemote, err)
		}
		_ = r.nc.PublishRequest(micro.APIPrefix+".PING."+svc, inbox, nil)
		_, err = sub.NextMsg(min(time.Until(deadline), 500*time.Millisecond))
		_ = sub.Unsubscribe()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: model %s: no instance of service %s answered within %s (start one: avflow serve --infer %s --nats URL)",
				ErrRemote, r.card, svc, wait, r.card)
		}
	}
}

// detect asks the service about each frame, all at once (so the service
// can batch them with other callers' frames), and returns the boxes of
// each in the frame's coordinates; streams names each frame's stream.
func (r *remote) detect(ctx context.Context, frames []*astiav.Frame, streams []string) ([][]box, error) {
	type answer struct {
		dets []box
		err  error
	}
	answers := make([]answer, len(frames))
	geos := make([]geometry, len(frames))
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	for i, f := range frames {
		body, g, err := r.request(f)
		if err != nil {
			return nil, err
		}
		geos[i] = g
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i].dets, answers[i].err = r.ask(ctx, body)
		}()
	}
	wg.Wait()
	out := make([][]box, len(frames))
	for i, a := range answers {
		switch {
		case a.err == nil:
			out[i] = inFrame(a.dets, geos[i])
			r.last[streams[i]] = out[i]
		case errors.Is(a.err, ErrRemote):
			return nil, a.err
		default:
			dets, err := r.missed(streams[i], a.err)
			if err != nil {
				return nil, err
			}
			out[i] = dets
		}
	}
	return out, nil
}

// request preprocesses one frame into a request body.
func (r *remote) request(f *astiav.Frame) ([]byte, geometry, error) {
	pix, sc, err := r.view.fillBytes(f, r.pix)
	if err != nil {
		return nil, geometry{}, fmt.Errorf("%w: model %s: %w", ErrInfer, r.card, err)
	}
	r.pix = pix
	req := inferwire.Request{Model: r.card, Caller: r.caller, W: sc.tw, H: sc.th, C: sc.ch, Threshold: r.thr, Pixels: pix}
	body, err := req.Marshal() // copies the pixels: the buffer serves the next frame
	if err != nil {
		return nil, geometry{}, fmt.Errorf("%w: model %s: %w", ErrRemote, r.card, err)
	}
	r.bytes.Add(int64(len(body)))
	return body, sc.geometry(), nil
}

// ask sends one request and reads its reply: an error reply (a request
// the service refuses) is ErrRemote; no answer is the context's error or
// nats.ErrNoResponders.
func (r *remote) ask(ctx context.Context, body []byte) ([]box, error) {
	r.sent.Add(1)
	m, err := r.nc.RequestWithContext(ctx, inferwire.Subject(r.card), body)
	if err != nil {
		return nil, err
	}
	if msg := m.Header.Get(micro.ErrorHeader); msg != "" {
		if m.Header.Get(micro.ErrorCodeHeader) == inferwire.CodeStopping {
			return nil, errServiceStopping // no answer: on_timeout says what follows
		}
		return nil, fmt.Errorf("%w: model %s: service %s refused a %s request from %s: %s %s", ErrRemote, r.card,
			inferwire.ServiceName(r.card), r.view.in.Name, r.caller, m.Header.Get(micro.ErrorCodeHeader), msg)
	}
	reply, err := inferwire.UnmarshalReply(m.Data)
	if err != nil {
		return nil, fmt.Errorf("%w: model %s: a reply of service %s: %w", ErrRemote, r.card, inferwire.ServiceName(r.card), err)
	}
	return reply.Boxes, nil
}

// missed applies the policy to a frame whose answer did not come (why).
func (r *remote) missed(stream string, why error) ([]box, error) {
	r.timeouts.Add(1)
	switch r.policy {
	case PolicyHold:
		r.held.Add(1)
		last := r.last[stream]
		kept := make([]box, len(last))
		for i, b := range last {
			b.Kept = true
			kept[i] = b
		}
		return kept, nil
	case PolicySkip:
		r.skipped.Add(1)
		return nil, nil
	}
	return nil, fmt.Errorf("%w: model %s: no answer from service %s within %s (on_timeout: fail): %w", ErrRemote, r.card,
		inferwire.ServiceName(r.card), r.timeout, why)
}

// counts are the remote stage's counters (its status events).
func (r *remote) counts() map[string]int64 {
	out := map[string]int64{"remote_requests": r.sent.Load(), "remote_bytes": r.bytes.Load()}
	for k, v := range map[string]int64{"remote_timeouts": r.timeouts.Load(), "remote_held": r.held.Load(), "remote_skipped": r.skipped.Load()} {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}
