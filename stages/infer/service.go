package infer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/stages/infer/inferwire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// ErrService wraps the failures of the shared inference service.
var ErrService = errors.New("infer service")

// ServiceOptions configure a shared inference service (avflow serve --infer).
type ServiceOptions struct {
	Model    string        // a card name (avflow models list) or a card file
	Dir      string        // the folder a card file path resolves against
	MaxBatch int           // images per model run, from any callers (at least 1)
	MaxWait  time.Duration // how long a run waits for more images (0: takes what is queued)
	Threads  int           // ONNX Runtime intra-op threads (0: one per core)
	Version  string        // the service's version (avflow's)
	Instance string        // this process's instance id, in the service's metadata
	Host     string
	Log      *slog.Logger
}

// Service runs one model for every caller on the NATS network: a micro
// service (inferwire.ServiceName) whose detect endpoint takes images
// (inferwire.Request) in its queue group and batches them across callers.
type Service struct {
	o     ServiceOptions
	det   *Detector
	w, h  int // the model's input size (0: any multiple of 32, a fit32 card)
	ch    int
	svc   micro.Service
	jobs  chan *job
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	stats serviceStats
	nc    *nats.Conn

	// inMu: handle holds it (read) while it queues a request, Stop (write)
	// while it closes, so no request is queued after Stop emptied the queue.
	inMu    sync.RWMutex
	closing bool
}

// job is one request waiting for the model. Its answer goes straight to
// reply: micro's request is its handler's, not the batch loop's.
type job struct {
	reply string
	r     inferwire.Request
}

// serviceStats are the service's counters (its micro stats data).
type serviceStats struct {
	requests, images, batches, maxBatch atomic.Int64
	badRequests, failed                 atomic.Int64
}

// NewService loads the model and registers the service on nc.
func NewService(ctx context.Context, nc *nats.Conn, o ServiceOptions) (*Service, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	o.MaxBatch = max(1, o.MaxBatch)
	in := pipeline.Init{Dir: o.Dir, Log: o.Log, Params: pipeline.Params{"threads": o.Threads, "optimization": "all", "spin": false}}
	m, err := load(ctx, in, o.Model)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrService, err)
	}
	d, err := newDetector(ctx, in, m, DetectorOptions{}, "")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrService, err)
	}
	s := &Service{o: o, det: d, nc: nc, jobs: make(chan *job, 4*o.MaxBatch), stop: make(chan struct{}), done: make(chan struct{})}
	s.w, s.h = inputSize(m.card.Inputs[0].Shape, m.card.Inputs[0].Layout, m.card.Inputs[0].Resize)
	s.ch = channels(m.card.Inputs[0].Color)
	if !d.Batchable() {
		s.o.MaxBatch = 1
	}
	if err := s.register(nc); err != nil {
		d.Close()
		return nil, err
	}
	go s.loop()
	o.Log.Info("inference service ready", "service", inferwire.ServiceName(m.card.Name), "subject", inferwire.Subject(m.card.Name),
		"input", s.inputName(), "max_batch", s.o.MaxBatch, "max_wait", o.MaxWait)
	return s, nil
}

// inputSize is a card input's fixed width and height (0, 0 for fit32,
// whose size follows the frame).
func inputSize(shape []int64, layout, resize string) (w, h int) {
	if resize == "fit32" || len(shape) != 4 {
		return 0, 0
	}
	if layout == "NHWC" {
		return int(shape[2]), int(shape[1])
	}
	return int(shape[3]), int(shape[2])
}

// channels is the number of channels of a card's colour order.
func channels(color string) int {
	if color == "GRAY" {
		return 1
	}
	return 3
}

// inputName is the image size the service takes, as its metadata says.
func (s *Service) inputName() string {
	if s.w == 0 {
		return "WxHx" + strconv.Itoa(s.ch) + " (multiples of 32)"
	}
	return fmt.Sprintf("%dx%dx%d", s.w, s.h, s.ch)
}

func (s *Service) register(nc *nats.Conn) error {
	card := s.det.m.card
	svc, err := micro.AddService(nc, micro.Config{
		Name: inferwire.ServiceName(card.Name), Version: s.o.Version,
		Description: "avflow shared inference: " + card.Name + " on images callers preprocessed (see package inferwire)",
		Metadata: map[string]string{"model": card.Name, "input": s.inputName(), "color": card.Inputs[0].Color,
			"max_batch": strconv.Itoa(s.o.MaxBatch), "max_wait": s.o.MaxWait.String(), "device": s.det.m.device(pipeline.Init{}),
			"instance": s.o.Instance, "host": s.o.Host},
		StatsHandler: func(*micro.Endpoint) any { return s.Stats() },
	})
	if err != nil {
		return fmt.Errorf("%w: registering service %s failed: %w", ErrService, inferwire.ServiceName(card.Name), err)
	}
	if err := svc.AddEndpoint("detect", micro.HandlerFunc(s.handle), micro.WithEndpointSubject(inferwire.Subject(card.Name))); err != nil {
		_ = svc.Stop()
		return fmt.Errorf("%w: adding endpoint %s failed: %w", ErrService, inferwire.Subject(card.Name), err)
	}
	s.svc = svc
	return nil
}

// ServiceStats are the counters a service's micro stats show (data).
type ServiceStats struct {
	Requests    int64   `json:"requests"`
	Images      int64   `json:"images"`  // images run through the model
	Batches     int64   `json:"batches"` // model runs
	MeanBatch   float64 `json:"mean_batch"`
	MaxBatch    int64   `json:"max_batch_seen"`
	BadRequests int64   `json:"bad_requests"`
	Failed      int64   `json:"failed"`
}

// Stats are the service's counters now.
func (s *Service) Stats() ServiceStats {
	st := ServiceStats{Requests: s.stats.requests.Load(), Images: s.stats.images.Load(), Batches: s.stats.batches.Load(),
		MaxBatch: s.stats.maxBatch.Load(), BadRequests: s.stats.badRequests.Load(), Failed: s.stats.failed.Load()}
	if st.Batches > 0 {
		st.MeanBatch = float64(st.Images) / float64(st.Batches)
	}
	return st
}

// handle checks a request and queues it for the model.
func (s *Service) handle(req micro.Request) {
	s.stats.requests.Add(1)
	if req.Reply() == "" { // nobody would read the answer: not worth the model
		s.stats.badRequests.Add(1)
		return
	}
	r, err := inferwire.UnmarshalRequest(req.Data())
	if err == nil {
		err = s.check(r)
	}
	if err != nil {
		s.refuse(req, r, err)
		return
	}
	s.inMu.RLock()
	defer s.inMu.RUnlock()
	if s.closing {
		_ = req.Error(inferwire.CodeStopping, "the service is stopping", nil)
		return
	}
	select {
	case s.jobs <- &job{reply: req.Reply(), r: r}:
	case <-s.stop:
		_ = req.Error(inferwire.CodeStopping, "the service is stopping", nil)
	}
}

// answer sends a job its reply, or its error (a micro error code and text).
func (s *Service) answer(j *job, body []byte, code, text string) {
	m := &nats.Msg{Subject: j.reply, Data: body}
	if code != "" {
		m.Header = nats.Header{micro.ErrorCodeHeader: []string{code}, micro.ErrorHeader: []string{text}}
	}
	_ = s.nc.PublishMsg(m)
}

// check says whether the service can run a well-formed request.
func (s *Service) check(r inferwire.Request) error {
	card := s.det.m.card
	switch {
	case r.Model != card.Name:
		return fmt.Errorf("%w: model %q is not served here (this is %s)", errNoModel, r.Model, inferwire.ServiceName(card.Name))
	case r.C != s.ch:
		return fmt.Errorf("%w: %d channels, model %s takes %d (%s)", errShape, r.C, card.Name, s.ch, card.Inputs[0].Color)
	case s.w != 0 && (r.W != s.w || r.H != s.h):
		return fmt.Errorf("%w: image %dx%d, model %s takes %dx%d", errShape, r.W, r.H, card.Name, s.w, s.h)
	case s.w == 0 && (r.W%32 != 0 || r.H%32 != 0):
		return fmt.Errorf("%w: image %dx%d, model %s takes sides that are multiples of 32", errShape, r.W, r.H, card.Name)
	}
	return nil
}

var (
	errNoModel = errors.New("unknown model")
	errShape   = errors.New("wrong image size")
)

// refuse answers a request the service cannot run, naming the caller in
// its log (once per caller would be kinder to the log; the counter says
// how many).
func (s *Service) refuse(req micro.Request, r inferwire.Request, err error) {
	s.stats.badRequests.Add(1)
	code := inferwire.CodeBadRequest
	if errors.Is(err, errNoModel) {
		code = inferwire.CodeNoModel
	}
	s.o.Log.Warn("inference request refused", "caller", fmt.Sprintf("%.80q", r.Caller), "model", fmt.Sprintf("%.80q", r.Model), "why", err)
	_ = req.Error(code, err.Error(), nil)
}

// loop takes queued requests in batches of images of one size and runs
// them, until Stop.
func (s *Service) loop() {
	defer close(s.done)
	var carry *job
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-s.jobs:
			case <-s.stop:
				return
			}
		}
		batch := []*job{first}
		batch, carry = s.fill(batch)
		s.run(batch)
	}
}

// fill adds queued requests of the first one's size to batch, up to
// MaxBatch, waiting at most MaxWait for them; a request of another size
// is returned to start the next batch.
func (s *Service) fill(batch []*job) ([]*job, *job) {
	var deadline <-chan time.Time
	if s.o.MaxWait > 0 {
		t := time.NewTimer(s.o.MaxWait)
		defer t.Stop()
		deadline = t.C
	}
	for len(batch) < s.o.MaxBatch {
		var j *job
		if deadline == nil {
			select {
			case j = <-s.jobs:
			default:
				return batch, nil
			}
		} else {
			select {
			case j = <-s.jobs:
			case <-deadline:
				return batch, nil
			case <-s.stop:
				return batch, nil
			}
		}
		if j.r.W != batch[0].r.W || j.r.H != batch[0].r.H {
			return batch, j
		}
		batch = append(batch, j)
	}
	return batch, nil
}

// run runs the model once on a batch of images of one size and answers
// each request.
func (s *Service) run(batch []*job) {
	w, h, n := batch[0].r.W, batch[0].r.H, len(batch)
	per := w * h * s.ch
	pix := make([]byte, 0, n*per)
	for _, j := range batch {
		pix = append(pix, j.r.Pixels...)
	}
	in := s.det.m.card.Inputs[0]
	r := &modelRun{buf: make([]float32, n*per), shape: tensorShape(n, w, h, s.ch, in.Layout == "NHWC"), tw: w, th: h}
	normaliseBytes(in, pix, w, h, s.ch, r.buf)
	s.det.execute(r)
	s.stats.batches.Add(1)
	s.stats.images.Add(int64(n))
	for cur := s.stats.maxBatch.Load(); int64(n) > cur && !s.stats.maxBatch.CompareAndSwap(cur, int64(n)); cur = s.stats.maxBatch.Load() {
	}
	for i, j := range batch {
		if r.err != nil {
			s.fail(j, r.err)
			continue
		}
		thr := j.r.Threshold
		if thr == 0 {
			thr = s.det.thr
		}
		dets, err := s.det.decode(r.outs, i, n, w, h, thr)
		if err != nil {
			s.fail(j, err)
			continue
		}
		s.det.label(dets)
		reply := inferwire.Reply{Boxes: dets}
		body, err := reply.Marshal()
		if err != nil {
			s.fail(j, err)
			continue
		}
		s.answer(j, body, "", "")
	}
}

// fail answers a request the model failed on.
func (s *Service) fail(j *job, err error) {
	s.stats.failed.Add(1)
	s.o.Log.Error("inference failed", "caller", fmt.Sprintf("%.80q", j.r.Caller), "model", s.det.m.card.Name, "image", fmt.Sprintf("%dx%dx%d", j.r.W, j.r.H, j.r.C), "err", err)
	s.answer(j, nil, inferwire.CodeFailed, err.Error())
}

// Stop stops taking requests, answers those queued, and frees the model.
func (s *Service) Stop() error {
	var err error
	s.once.Do(func() {
		err = s.svc.Stop() // unsubscribes; handlers may still be running
		close(s.stop)
		s.inMu.Lock() // a handler in flight has queued its request or answered
		s.closing = true
		s.inMu.Unlock()
		<-s.done
		for len(s.jobs) > 0 { // no handler queues more, and the loop is gone
			s.answer(<-s.jobs, nil, inferwire.CodeStopping, "the service is stopping")
		}
		if cerr := s.det.Close(); err == nil {
			err = cerr
		}
	})
	return err
}
