// Package source is the source stage: it demuxes a file, a network URL or an
// FFmpeg lavfi test source into compressed packets.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/secret"
	"github.com/avflow/avflow/pipeline/stage"
)

// Sentinel errors.
var (
	ErrOpen     = errors.New("source: opening input failed")
	ErrNoInput  = errors.New("source: input file not found")
	ErrNotFile  = errors.New("source: input is not a media file")
	ErrNoStream = errors.New("source: input has no usable stream")
	ErrCorrupt  = errors.New("source: input is truncated or corrupt")
)

// ioTimeout is how long a network input may send nothing before it fails,
// unless its options say otherwise.
const ioTimeout = 10 * time.Second

// What a source does with a damaged packet (on_corrupt).
const (
	corruptConceal = "conceal" // pass it on: the decoder hides the damage
	corruptDrop    = "drop"    // leave it out
	corruptFail    = "fail"    // stop the run
)

func init() {
	astiav.RegisterAllDevices()
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "source",
		Summary: "Demux a file, FIFO, URL (http, rtsp, rtmp, srt...) or lavfi test source into video and audio packets.",
		Params: []pipeline.Param{
			{Name: "url", Type: pipeline.TypeString, Required: true, Doc: "file path (relative to the pipeline file), URL, or lavfi:<graph> such as lavfi:testsrc2=size=1280x720:rate=30; a FIFO (named pipe) is read as a stream, waiting for its writer"},
			{Name: "format", Type: pipeline.TypeString, Doc: "force the input format (e.g. lavfi, mpegts, v4l2 for a camera device); empty probes it"},
			{Name: "options", Type: pipeline.TypeMap, Doc: "demuxer and protocol options, e.g. {rtsp_transport: tcp}. A network input fails after " + ioTimeout.String() +
				" without data: rw_timeout: " + micros(ioTimeout) + " (microseconds) is set for http(s), rtmp, tcp, tls and other protocols, timeout: " + micros(ioTimeout) +
				" for rtsp, srt and rist; set the same option here to change it (0: wait for ever). udp and rtp inputs wait for a sender"},
			{Name: "realtime", Type: pipeline.TypeBool, Default: false, Doc: "pace packets at the media's own rate (live simulation)"},
			{Name: "loop", Type: pipeline.TypeBool, Default: false, Doc: "start again at the end, with continuous timestamps"},
			{Name: "max_frames", Type: pipeline.TypeInt, Default: 0, Doc: "stop after this many video packets (0: no limit)"},
			{Name: "video", Type: pipeline.TypeBool, Default: true, Doc: "read the first video stream (when a stage reads the video port)"},
			{Name: "audio", Type: pipeline.TypeBool, Default: true, Doc: "read the first audio stream (when a stage reads the audio port)"},
			{Name: "on_corrupt", Type: pipeline.TypeString, Default: corruptConceal, Enum: []string{corruptConceal, corruptDrop, corruptFail},
				Doc: "a damaged packet (a lost or broken TS packet): conceal passes it to the decoder, which hides the damage as the ffmpeg CLI does; drop leaves it out; fail stops the run. Each is logged and counted"},
		},
		MinInputs: 0, MaxInputs: 0,
		Ports: func(p pipeline.Params, _ []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{
				{Name: "video", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaVideo}, Unread: unread(p, "video")},
				{Name: "audio", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaAudio}, Unread: unread(p, "audio")},
			}, nil
		},
		Check: func(p pipeline.Params, dir string) error {
			if p.Int("max_frames") < 0 {
				return fmt.Errorf("source: max_frames is %d: want 0 (no limit) or more", p.Int("max_frames"))
			}
			url, format := p.String("url"), p.String("format")
			if isLocalFile(url, format) {
				return checkLocal(pipeline.ResolvePath(dir, url))
			}
			return nil
		},
		New: New,
	})
}

// unread is what the source does with a port no stage reads: it does not
// read that stream from the input, quietly when its param turned it off.
func unread(p pipeline.Params, port string) pipeline.Unread {
	if !p.Bool(port) {
		return pipeline.UnreadQuiet
	}
	return pipeline.UnreadSkipped
}

func micros(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }

// isLocalFile says whether url names a file the source resolves against
// the pipeline's folder (no URL scheme, no lavfi graph, no forced format).
func isLocalFile(url, format string) bool {
	return format == "" && !strings.HasPrefix(url, "lavfi:") && !strings.Contains(url, "://")
}

// checkLocal checks a local input before the run: it exists, and is a
// file or a FIFO. Devices and sockets are read with a format (v4l2...).
func checkLocal(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %s", ErrNoInput, path)
	case fi.IsDir():
		return fmt.Errorf("%w: %s is a directory", ErrNotFile, path)
	case fi.Mode().IsRegular() || fi.Mode()&fs.ModeNamedPipe != 0:
		return nil
	}
	return fmt.Errorf("%w: %s is a %s: name its format (e.g. format: v4l2 for a camera) to read a device", ErrNotFile, path, fileKind(fi.Mode()))
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// resolve turns the url and format params into what FFmpeg opens.
func resolve(in pipeline.Init) (url, format string) {
	url, format = in.Params.String("url"), in.Params.String("format")
	if fd, ok := pipeFD(url); ok {
		// FFmpeg's pipe: protocol blocks in read(2) where no interrupt
		// reaches; the descriptor's /dev/fd path is read as a FIFO (or
		// a file, when stdin is redirected from one), stoppably.
		return "/dev/fd/" + fd, format
	}
	if path, ok := strings.CutPrefix(url, "file:"); ok && isFIFO(strings.TrimPrefix(path, "//")) {
		// FFmpeg's file protocol would block in open(2) until a writer came.
		return strings.TrimPrefix(path, "//"), format
	}
	switch {
	case strings.HasPrefix(url, "lavfi:"):
		return strings.TrimPrefix(url, "lavfi:"), "lavfi"
	case isLocalFile(url, format):
		return in.Path(url), format
	}
	return url, format
}

// pipeFD is the file descriptor a pipe input names, as FFmpeg spells them:
// "-" and "pipe:" are stdin, "pipe:N" is descriptor N.
func pipeFD(url string) (string, bool) {
	switch {
	case url == "-" || url == "pipe:":
		return "0", true
	case strings.HasPrefix(url, "pipe:"):
		n := strings.TrimPrefix(url, "pipe:")
		if _, err := strconv.Atoi(n); err == nil {
			return n, true
		}
	}
	return "", false
}

// scheme is a URL's protocol, lower case ("" for a path or a lavfi graph).
func scheme(url string) string {
	i := strings.Index(url, "://")
	if i <= 0 {
		return ""
	}
	return strings.ToLower(url[:i])
}

// timeoutOption is the option that bounds how long a protocol waits for
// data, "" for those that have none to set: files, and udp and rtp, which
// wait for a sender (rtmp's own timeout would make it listen).
func timeoutOption(url string) string {
	switch scheme(url) {
	case "", "file", "pipe", "udp", "udplite", "rtp":
		return ""
	case "rtsp", "rtsps", "srt", "rist":
		return "timeout"
	}
	return "rw_timeout"
}

// openOptions are the options FFmpeg opens url with: the default I/O
// timeout of its protocol, then the user's options, which win.
func openOptions(url string, user map[string]string) map[string]string {
	opts := map[string]string{}
	if k := timeoutOption(url); k != "" {
		opts[k] = micros(ioTimeout)
	}
	for k, v := range user {
		opts[k] = v
	}
	return opts
}

type stream struct {
	index    int
	media    envelope.Media
	port     string
	tb       astiav.Rational
	params   *envelope.CodecParams
	offset   int64 // added to timestamps after a loop
	maxEnd   int64 // latest pts+duration seen (offset included), for the loop offset
	firstPTS int64 // earliest pts of the first pass
	firstDTS int64 // first known dts, for real-time pacing
	started  bool
	seenPTS  bool
}

type Source struct {
	stage.Base
	in        pipeline.Init
	url       string // what FFmpeg opens
	display   string // url for logs and errors, credentials hidden
	fc        *astiav.FormatContext
	intr      astiav.IOInterrupter
	intrMu    sync.Mutex // serialises the interrupter's callbacks (see stopOn)
	fifo      *fifo      // the input is a FIFO read through avflow's own I/O
	streams   map[int]*stream
	pkt       *astiav.Packet
	realtime  bool
	loop      bool
	max       int
	onCorrupt string
	vcount    int
	total     int64
	declared  int64 // video packets the container's index announces (0: unknown)
	start     time.Time
	stops     []func() bool // context.AfterFunc registrations, undone by Close
	reading   bool
	eof       bool
	corrupt   atomic.Int64 // damaged packets met
	warned    time.Time    // last damaged-packet warning
}

// New opens the input. ctx (the run's) interrupts the opening: a server
// that never answers, a FIFO nobody writes to.
func New(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
	s := &Source{in: in, streams: map[int]*stream{}, realtime: in.Params.Bool("realtime"),
		loop: in.Params.Bool("loop"), max: in.Params.Int("max_frames"), onCorrupt: in.Params.String("on_corrupt")}
	if s.onCorrupt == "" {
		s.onCorrupt = corruptConceal
	}
	url, format := resolve(in)
	s.url, s.display = url, secret.URL(url)
	var ifmt *astiav.InputFormat
	if format != "" {
		if ifmt = astiav.FindInputFormat(format); ifmt == nil {
			return nil, fmt.Errorf("%w: %s: unknown input format %q", ErrOpen, s.display, format)
		}
	}
	if err := s.open(ctx, ifmt, openOptions(url, in.Params.Map("options"))); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.selectStreams(); err != nil {
		s.Close()
		return nil, err
	}
	if s.loop || format == "lavfi" {
		s.total = 0
	}
	if s.max > 0 && (s.total == 0 || int64(s.max) < s.total) {
		s.total = int64(s.max)
	}
	s.pkt = astiav.AllocPacket()
	return s, nil
}

// open opens the input and reads its stream info, interruptibly.
func (s *Source) open(ctx context.Context, ifmt *astiav.InputFormat, opts map[string]string) error {
	d := astiav.NewDictionary()
	defer d.Free()
	for k, v := range opts {
		if err := d.Set(k, v, 0); err != nil {
			return fmt.Errorf("%w: option %s: %w", ErrOpen, k, err)
		}
	}
	s.fc = astiav.AllocFormatContext()
	if s.fc == nil {
		return fmt.Errorf("%w: allocating format context", ErrOpen)
	}
	s.intr = s.fc.SetInterruptCallback()
	if isFIFO(s.url) {
		f, err := openFIFO(s.url)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrOpen, s.display, err)
		}
		s.fifo = f
		s.fc.SetPb(f.pb)
		s.in.Log.Info("input is a FIFO: reading it as a stream once its writer sends data", "path", s.display)
	}
	s.stopOn(ctx)
	if err := s.fc.OpenInput(s.url, ifmt, d); err != nil {
		// avformat_open_input freed the context.
		s.fc = nil
		return s.openError(ctx, "", err, opts)
	}
	if err := s.fc.FindStreamInfo(nil); err != nil {
		return s.openError(ctx, "reading stream info: ", err, opts)
	}
	return nil
}

// stopOn interrupts the input's I/O when ctx ends. New's context and the
// run's may end at once: the interrupter's flag is a plain C int, so the
// callbacks take turns setting it.
func (s *Source) stopOn(ctx context.Context) {
	intr, f := s.intr, s.fifo
	s.stops = append(s.stops, context.AfterFunc(ctx, func() {
		s.intrMu.Lock()
		defer s.intrMu.Unlock()
		intr.Interrupt()
		if f != nil {
			f.interrupt()
		}
	}))
}

// openError says why opening failed: stopped, timed out, or FFmpeg's reason.
func (s *Source) openError(ctx context.Context, what string, err error, opts map[string]string) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %s: %sstopped: %w", ErrOpen, s.display, what, context.Cause(ctx))
	}
	if k := timeoutOption(s.url); k != "" && errors.Is(err, astiav.ErrEtimedout) {
		return fmt.Errorf("%w: %s: %snothing received for %s (options: {%s: %s} sets the limit in microseconds): %w", ErrOpen, s.display, what, timeoutText(opts[k]), k, opts[k], err)
	}
	return fmt.Errorf("%w: %s: %s%w", ErrOpen, s.display, what, err)
}

// timeoutText shows a timeout option's microseconds as a duration.
func timeoutText(us string) string {
	n, err := strconv.ParseInt(us, 10, 64)
	if err != nil {
		return us + "µs"
	}
	return (time.Duration(n) * time.Microsecond).String()
}

// selectStreams picks the first video and audio streams the pipeline
// reads, and says at once when a stream a stage reads is missing.
func (s *Source) selectStreams() error {
	for _, st := range s.fc.Streams() {
		cp := st.CodecParameters()
		media := codecs.MediaOf(cp.MediaType())
		if (media != envelope.MediaVideo && media != envelope.MediaAudio) || s.has(media) {
			continue
		}
		port := portOf(media)
		if !s.read(port) {
			continue
		}
		fr := astiav.NewRational(0, 1)
		if media == envelope.MediaVideo {
			if fr = st.AvgFrameRate(); fr.Num() == 0 {
				fr = st.RFrameRate()
			}
			if n := st.NbFrames(); n > 0 {
				s.total, s.declared = n, n
			} else if d := s.fc.Duration(); d > 0 && fr.Num() > 0 {
				s.total = int64(float64(d) / 1e6 * fr.Float64())
			}
		}
		s.streams[st.Index()] = &stream{index: st.Index(), media: media, port: port, tb: st.TimeBase(), params: codecs.Params(cp, fr)}
	}
	if err := s.checkPorts(); err != nil {
		return err
	}
	if len(s.streams) == 0 {
		return fmt.Errorf("%w: %s has no video or audio stream", ErrNoStream, s.display)
	}
	for _, st := range s.streams {
		s.in.Log.Info("input stream", "url", s.display, "port", st.port, "codec", st.params.Codec, "width", st.params.Width, "height", st.params.Height,
			"sample_rate", st.params.SampleRate, "time_base", st.tb.String())
	}
	return nil
}

func portOf(m envelope.Media) string {
	if m == envelope.MediaVideo {
		return "video"
	}
	return "audio"
}

// readers are the stages that read a port; nil when the runner does not
// say (every port is read then).
func (s *Source) readers(port string) []string {
	if s.in.Consumers == nil {
		return nil
	}
	return s.in.Consumers[port]
}

// read says whether the source reads a port's stream: the video or audio
// param allows it, and a stage reads the port (when the runner says who
// reads what: over NATS an outside client may read a port no stage
// reads, but the runner then names no reader for any port).
func (s *Source) read(port string) bool {
	return s.in.Params.Bool(port) && (s.in.Consumers == nil || len(s.in.Consumers[port]) > 0)
}

// checkPorts says what happens to each port whose stream is not read: a
// video stream a stage reads must be there; a missing audio stream ends
// its port at once; a stream no stage reads is left alone.
func (s *Source) checkPorts() error {
	for _, media := range []envelope.Media{envelope.MediaVideo, envelope.MediaAudio} {
		port := portOf(media)
		asked := s.in.Params.Bool(port)
		readers := s.readers(port)
		who := strings.Join(readers, ", ")
		switch {
		case s.has(media):
		case len(readers) > 0 && !asked:
			return fmt.Errorf("%w: %s is false, but stage %s reads %s.%s", ErrNoStream, port, who, s.in.Name, port)
		case len(readers) > 0 && media == envelope.MediaVideo:
			return fmt.Errorf("%w: %s has no video stream, but stage %s reads %s.video", ErrNoStream, s.display, who, s.in.Name)
		case len(readers) > 0 || (asked && s.in.Consumers == nil):
			s.in.Log.Info("input has no "+port+" stream: the "+port+" port ends at once", "url", s.display, "readers", who)
		case asked && s.streamOf(media):
			s.in.Log.Info("the input's "+port+" stream is not read: no stage reads "+s.in.Name+"."+port, "url", s.display)
		}
	}
	return nil
}

// streamOf says whether the input has a stream of this media at all.
func (s *Source) streamOf(m envelope.Media) bool {
	for _, st := range s.fc.Streams() {
		if codecs.MediaOf(st.CodecParameters().MediaType()) == m {
			return true
		}
	}
	return false
}

func (s *Source) has(m envelope.Media) bool {
	for _, st := range s.streams {
		if st.media == m {
			return true
		}
	}
	return false
}

// Status reports the expected number of video packets (0: unknown or
// endless) and the corrupt packets read.
func (s *Source) Status() stage.Status {
	return stage.Status{Total: s.total, Counts: map[string]int64{"corrupt_packets": s.corrupt.Load()}}
}

// Process reads the next packet of a selected stream. ctx (the source's:
// Drain ends it) interrupts a read that waits for data.
func (s *Source) Process(ctx context.Context, _ stage.Batch) (stage.Batch, error) {
	if !s.reading {
		s.reading = true
		s.stopOn(ctx)
		s.start = time.Now()
	}
	if s.eof || (s.max > 0 && s.vcount >= s.max) {
		return nil, io.EOF
	}
	for {
		if err := s.fc.ReadFrame(s.pkt); err != nil {
			if errors.Is(err, astiav.ErrEof) {
				if s.loop && s.rewind() == nil {
					continue
				}
				return nil, s.ended()
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("source: reading %s failed: %w", s.display, err)
		}
		st, ok := s.streams[s.pkt.StreamIndex()]
		if !ok {
			s.pkt.Unref()
			continue
		}
		if s.pkt.Flags().Has(astiav.PacketFlagCorrupt) {
			if err := s.damaged(st); err != nil || s.onCorrupt == corruptDrop {
				s.pkt.Unref()
				if err != nil {
					return nil, err
				}
				continue
			}
		}
		e, err := s.emit(ctx, st)
		if err != nil {
			return nil, err
		}
		return stage.Batch{e}, nil
	}
}

// ended is the end of the input: io.EOF, or ErrCorrupt for a container
// whose index announces more frames than it holds (it was cut short).
func (s *Source) ended() error {
	s.eof = true
	if n := s.corrupt.Load(); n > 0 {
		s.in.Log.Warn("input ended; it had damaged packets", "url", s.display, "damaged", n, "on_corrupt", s.onCorrupt)
	}
	if s.max == 0 && s.declared > 0 && float64(s.vcount) < 0.99*float64(s.declared) {
		return fmt.Errorf("%w: %s ended after %d of the %d video frames its index announces", ErrCorrupt, s.display, s.vcount, s.declared)
	}
	return io.EOF
}

// damaged counts a packet the demuxer flagged as damaged (a lost TS
// packet, a short read) and says so; with on_corrupt: fail it is the end.
func (s *Source) damaged(st *stream) error {
	n := s.corrupt.Add(1)
	if s.onCorrupt == corruptFail {
		return fmt.Errorf("%w: %s: %s packet %d is damaged (on_corrupt: fail)", ErrCorrupt, s.display, st.port, s.vcount)
	}
	// One warning, then one every few seconds, not one per packet.
	if n == 1 || time.Since(s.warned) > 5*time.Second {
		s.warned = time.Now()
		what := "passed to the decoder, which conceals the damage"
		if s.onCorrupt == corruptDrop {
			what = "dropped"
		}
		s.in.Log.Warn("damaged packet "+what, "url", s.display, "port", st.port, "pts", s.pkt.Pts(), "damaged", n, "on_corrupt", s.onCorrupt)
	}
	return nil
}

// emit turns the packet read into an envelope: timestamps moved on after a
// loop, paced in real time when asked.
func (s *Source) emit(ctx context.Context, st *stream) (*stage.Msg, error) {
	p := astiav.AllocPacket()
	p.MoveRef(s.pkt)
	if st.offset != 0 {
		if p.Pts() != astiav.NoPtsValue {
			p.SetPts(p.Pts() + st.offset)
		}
		if p.Dts() != astiav.NoPtsValue {
			p.SetDts(p.Dts() + st.offset)
		}
	}
	if ts := p.Pts(); ts != astiav.NoPtsValue {
		if st.offset == 0 && (!st.seenPTS || ts < st.firstPTS) {
			st.firstPTS, st.seenPTS = ts, true
		}
		st.maxEnd = max(st.maxEnd, ts+p.Duration())
	}
	if p.Dts() != astiav.NoPtsValue {
		if !st.started {
			st.firstDTS, st.started = p.Dts(), true
		}
		st.maxEnd = max(st.maxEnd, p.Dts()+p.Duration())
		if s.realtime {
			if err := s.pace(ctx, st, p.Dts()); err != nil {
				p.Free()
				return nil, err
			}
		}
	}
	e := codecs.PacketMsg(p, st.media, st.params, st.tb)
	e.Port = st.port
	if st.media == envelope.MediaVideo {
		s.vcount++
	}
	return e, nil
}

// pace sleeps until the packet's media time has come on the wall clock.
func (s *Source) pace(ctx context.Context, st *stream, dts int64) error {
	due := s.start.Add(time.Duration(float64(dts-st.firstDTS) * st.tb.Float64() * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *Source) rewind() error {
	if err := s.fc.SeekFrame(-1, 0, astiav.NewSeekFlags(astiav.SeekFlagBackward)); err != nil {
		s.in.Log.Warn("loop: seeking to the start failed; ending", "error", err)
		return err
	}
	// The next pass starts where the last one's presentation ended.
	for _, st := range s.streams {
		st.offset = st.maxEnd - st.firstPTS
	}
	return nil
}

// Close releases the input.
func (s *Source) Close() error {
	for _, stop := range s.stops {
		stop()
	}
	s.stops = nil
	if s.pkt != nil {
		s.pkt.Free()
		s.pkt = nil
	}
	if s.fc != nil {
		s.fc.CloseInput()
		s.fc.Free()
		s.fc = nil
	}
	if s.fifo != nil {
		s.fifo.close()
		s.fifo = nil
	}
	return nil
}
