// Package sink is the sink stage: it muxes packets from one or more encode
// (or copy) stages into a file (MP4, MKV, ...), HLS, an RTMP/SRT URL, or null.
package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	ErrOpen    = errors.New("sink: opening output failed")
	ErrWrite   = errors.New("sink: writing output failed")
	ErrStalled = errors.New("sink: output stalled")
)

// PartialSuffix is appended to a file output's name while it is written;
// the file gets its real name only once it is complete.
const PartialSuffix = ".partial"

// maxPending bounds the packets held while waiting for every input's first packet.
const maxPending = 2000

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "sink",
		Summary: "Mux packets into a file (MP4, MKV, ...), HLS playlist, RTMP/SRT URL, or null.",
		Params: []pipeline.Param{
			{Name: "path", Type: pipeline.TypeString, Required: true, Doc: "output file (relative to the pipeline file), .m3u8 for HLS, rtmp://, srt://, udp:// or tcp:// URL, or null; " +
				"a file is written as <path>.partial and renamed once complete (removed if the run fails), links are never written through, a directory there is an error at start"},
			{Name: "format", Type: pipeline.TypeString, Doc: "force the muxer (mp4, matroska, hls, flv, mpegts, null); empty guesses from path"},
			{Name: "faststart", Type: pipeline.TypeBool, Default: true, Doc: "MP4/MOV files: move the index (moov) before the media data when the file is finished, " +
				"so that players start at once without fetching the file's end (the file is rewritten once at the end); false leaves it at the end (so does movflags: -faststart)"},
			{Name: "hls_time", Type: pipeline.TypeDuration, Default: "2s", Doc: "HLS: target segment length"},
			{Name: "hls_list_size", Type: pipeline.TypeInt, Default: 6, Doc: "HLS: segments kept in the playlist (0: all); in live runs (flow: drop-oldest) the segment files " +
				"that left the playlist are deleted (hls_flags delete_segments), so the folder holds only a few more; each segment is written as <name>.tmp and renamed when complete"},
			{Name: "timeout", Type: pipeline.TypeDuration, Default: "10s", Doc: "network outputs: a connect, or the write of one packet, that takes longer than this fails the run, naming the URL " +
				"(a warning comes after 2s, or half the timeout; raise it for big keyframes over a slow uplink); it is also the protocols' rw_timeout (options can override it); 0: no timeout (a stopping run still interrupts it)"},
			{Name: "options", Type: pipeline.TypeMap, Doc: "muxer options (and, for a URL, protocol options), e.g. {hls_flags: +independent_segments}; " +
				"a movflags or hls_flags value starting with + or - adds to or removes from the sink's own flags, any other value replaces them"},
		},
		MinInputs: 1, MaxInputs: -1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			for i, t := range in {
				if t.Kind != envelope.KindPacket {
					return nil, fmt.Errorf("sink input %d gives %s; a sink takes packets: put an encode stage before it", i+1, t)
				}
			}
			return nil, nil
		},
		New: New,
	})
}

type stream struct {
	params *envelope.CodecParams
	media  envelope.Media
	tb     astiav.Rational
	st     *astiav.Stream
	seen   bool
	ended  bool
	last   int64 // last dts written (NoPtsValue before the first)
}

// fixTimestamps keeps dts strictly increasing, as muxers require, for
// inputs whose demuxer leaves the first dts unset (Matroska with B-frames)
// or repeats one; pts is never let fall below dts. It mirrors what the
// ffmpeg CLI does when it muxes such streams.
func (st *stream) fixTimestamps(pkt *astiav.Packet) {
	dts, pts := pkt.Dts(), pkt.Pts()
	if dts == astiav.NoPtsValue {
		switch {
		case st.last != astiav.NoPtsValue:
			dts = st.last + 1
		case pts != astiav.NoPtsValue:
			dts = pts
		default:
			dts = 0
		}
	}
	if st.last != astiav.NoPtsValue && dts <= st.last {
		dts = st.last + 1
	}
	if pts == astiav.NoPtsValue || pts < dts {
		pts = dts
	}
	pkt.SetDts(dts)
	pkt.SetPts(pts)
	st.last = dts
}

// Sink muxes its inputs into one output.
type Sink struct {
	stage.Base
	in      pipeline.Init
	path    string // final path or URL
	url     string // path as logs and errors show it (credentials hidden)
	tmp     string // file being written ("" when not a plain file)
	fd      int    // tmp, until the muxer takes it (-1: none)
	format  string
	network bool // path is a URL of a network protocol
	timeout time.Duration
	fc      *astiav.FormatContext
	io      *muxIO
	intr    astiav.IOInterrupter
	intrMu  sync.Mutex
	stopCtx func() bool
	dog     *watchdog // network outputs only
	streams []*stream
	pending []*stage.Msg
	header  bool
	done    bool
	written int64
	started time.Time
}

// New prepares the output; it is opened once every input has sent its
// first packet. A file output's temporary file is created here, so that a
// path that cannot be written fails the run before it starts.
func New(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
	s := &Sink{in: in, format: in.Params.String("format"), fd: -1, timeout: in.Params.Duration("timeout"), started: time.Now()}
	for range in.Inputs {
		s.streams = append(s.streams, &stream{last: astiav.NoPtsValue})
	}
	local, err := s.resolve(in.Params.String("path"))
	if err != nil {
		return nil, err
	}
	// Fail early on a muxer that does not exist.
	fc, err := astiav.AllocOutputFormatContext(nil, s.format, s.path)
	if err != nil || fc == nil {
		if err == nil {
			err = astiav.ErrMuxerNotFound
		}
		return nil, fmt.Errorf("%w: %s: no muxer for this name (set format): %w", ErrOpen, s.url, err)
	}
	s.fc = fc
	ok := false
	defer func() {
		if !ok {
			_ = s.Close()
		}
	}()
	if s.io, err = newMuxIO(); err != nil {
		return nil, err
	}
	s.io.install(fc)
	s.intr = fc.SetInterruptCallback()
	s.stopCtx = context.AfterFunc(ctx, s.interrupt)
	if s.timeout > 0 {
		if err := s.io.setNetOption("rw_timeout", strconv.FormatInt(s.timeout.Microseconds(), 10)); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrOpen, err)
		}
	}
	if s.network {
		s.dog = newWatchdog(in.Log, s.url, s.timeout, s.interrupt)
	}
	if local {
		if err := s.checkPath(); err != nil {
			return nil, err
		}
		// HLS writes files of its own, each through a temporary name (sinkio.c).
		if !fc.OutputFormat().Flags().Has(astiav.IOFormatFlagNofile) {
			if err := s.createTemp(); err != nil {
				return nil, err
			}
		}
	}
	ok = true
	return s, nil
}

// resolve sets the output's path (or URL) and muxer from the path param;
// it reports whether the output is a local file.
func (s *Sink) resolve(path string) (local bool, err error) {
	switch {
	case path == "null" || s.format == "null":
		s.path, s.format = "", "null"
	case strings.HasPrefix(path, "rtmp://") || strings.HasPrefix(path, "rtmps://"):
		s.path = path
		if s.format == "" {
			s.format = "flv"
		}
	case strings.HasPrefix(path, "srt://") || strings.HasPrefix(path, "udp://") || strings.HasPrefix(path, "tcp://"):
		s.path = path
		if strings.HasPrefix(path, "srt://") && !strings.Contains(path, "linger=") {
			// Live-mode SRT drops what is still unsent when the socket closes;
			// give the last packets time to leave.
			sep := "?"
			if strings.Contains(path, "?") {
				sep = "&"
			}
			s.path += sep + "linger=2"
		}
		if s.format == "" {
			s.format = "mpegts"
		}
	case strings.Contains(path, "://"):
		s.path = path
	default:
		s.path = s.in.Path(path)
		if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
			return false, fmt.Errorf("%w: %w", ErrOpen, err)
		}
		if s.format == "" && strings.HasSuffix(strings.ToLower(path), ".m3u8") {
			s.format = "hls"
		}
		local = true
	}
	s.network = !local && s.path != ""
	s.url = s.display()
	return local, nil
}

// checkPath refuses a directory where the output goes. A link there is
// replaced by the output when it is complete, never written through.
func (s *Sink) checkPath() error {
	fi, err := os.Lstat(s.path)
	switch {
	case err != nil:
		return nil
	case fi.IsDir():
		return fmt.Errorf("%w: %s: %w (the output must be a file)", ErrOpen, s.path, syscall.EISDIR)
	case fi.Mode()&os.ModeSymlink != 0:
		s.in.Log.Warn("the output path is a symbolic link: the output will replace the link, its target is left alone", "path", s.path)
	}
	return nil
}

// createTemp creates the file the output is written to until it is
// complete: path.partial, or path.<random>.partial when something (a file
// left by a killed run, a link) is in the way; that is left alone. It is
// created new, so no link is ever followed.
func (s *Sink) createTemp() error {
	tmp := s.path + PartialSuffix
	fd, err := createNew(tmp)
	for try := 0; errors.Is(err, syscall.EEXIST) && try < 100; try++ {
		if try == 0 {
			s.in.Log.Warn("a file is in the way of the partial output: it is left alone and another name is used", "path", tmp)
		}
		tmp = s.path + "." + strconv.FormatUint(uint64(rand.Uint32()), 36) + PartialSuffix
		fd, err = createNew(tmp)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	s.tmp, s.fd = tmp, fd
	// The MP4 muxer reopens its file by name to move the index to the front.
	if err := setURL(s.fc, tmp); err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	return nil
}

// createNew creates a file that must not exist yet (not even as a link).
func createNew(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o666)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, &os.PathError{Op: "create", Path: path, Err: err}
		}
		return fd, nil
	}
}

// interrupt makes the output's blocking I/O return at once (the run ended,
// or a write stalled past the timeout).
func (s *Sink) interrupt() {
	s.intrMu.Lock()
	defer s.intrMu.Unlock()
	s.intr.Interrupt()
}

// Process takes packets; they are held until every input has started.
func (s *Sink) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	for _, e := range in {
		st := s.streams[e.Input]
		if !st.seen {
			if e.Codec == nil {
				return nil, fmt.Errorf("%w: input %d: packet without codec parameters", ErrOpen, e.Input+1)
			}
			st.params, st.media, st.tb, st.seen = e.Codec, e.Media, codecs.AVRat(e.TimeBase), true
		}
		if !s.header {
			held := *e
			e.Local = nil // the sink owns it now
			s.pending = append(s.pending, &held)
			if err := s.tryHeader(ctx, len(s.pending) > maxPending); err != nil {
				return nil, err
			}
			continue
		}
		if err := s.write(ctx, e); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// EndInput notes that an input is over (it may never have sent anything).
func (s *Sink) EndInput(ctx context.Context, i int) (stage.Batch, error) {
	s.streams[i].ended = true
	if !s.header {
		return nil, s.tryHeader(ctx, false)
	}
	return nil, nil
}

func (s *Sink) tryHeader(ctx context.Context, force bool) error {
	for _, st := range s.streams {
		if !st.seen && !st.ended && !force {
			return nil
		}
	}
	n := 0
	for i, st := range s.streams {
		if !st.seen {
			if !st.ended {
				s.in.Log.Warn("input sent nothing before the output had to start; it is left out", "input", i+1)
			}
			continue
		}
		n++
	}
	if n == 0 {
		return nil // nothing at all yet (every input ended empty): Flush reports it
	}
	if err := s.writeHeader(ctx); err != nil {
		return err
	}
	pending := s.pending
	s.pending = nil
	for i, e := range pending {
		if err := s.write(ctx, e); err != nil {
			for _, r := range pending[i:] {
				r.Release()
			}
			return err
		}
		e.Release()
	}
	return nil
}

func (s *Sink) writeHeader(ctx context.Context) error {
	for i, st := range s.streams {
		if !st.seen {
			continue
		}
		ost := s.fc.NewStream(nil)
		if ost == nil {
			return fmt.Errorf("%w: adding stream %d", ErrOpen, i+1)
		}
		if err := codecs.ToFFmpeg(st.params, st.media, ost.CodecParameters()); err != nil {
			return fmt.Errorf("%w: stream %d: %w", ErrOpen, i+1, err)
		}
		ost.CodecParameters().SetCodecTag(0) // let the muxer pick its own tag
		ost.SetTimeBase(st.tb)
		if st.params.FrameRate.Num > 0 {
			ost.SetAvgFrameRate(codecs.AVRat(st.params.FrameRate))
		}
		st.st = ost
	}
	d := astiav.NewDictionary()
	defer d.Free()
	for k, v := range s.muxerOptions() {
		if err := d.Set(k, v, 0); err != nil {
			return fmt.Errorf("%w: option %s: %w", ErrOpen, k, err)
		}
	}
	err := s.call(ctx, ErrOpen, "opening", func() error {
		if err := s.openOutput(d); err != nil {
			return err
		}
		return s.fc.WriteHeader(d)
	})
	if err != nil {
		return err
	}
	if left := d.Get("", nil, astiav.NewDictionaryFlags(astiav.DictionaryFlagIgnoreSuffix)); left != nil {
		return fmt.Errorf("%w: muxer %s does not know option %q", ErrOpen, s.fc.OutputFormat().Name(), left.Key())
	}
	s.header = true
	s.in.Log.Info("output opened", "path", s.url, "format", s.fc.OutputFormat().Name(), "streams", s.fc.NbStreams())
	return nil
}

// openOutput gives the muxer its output, unless it opens its own files
// (HLS, null): the temporary file, or the URL, which takes the protocol
// options of d.
func (s *Sink) openOutput(d *astiav.Dictionary) error {
	if s.fc.OutputFormat().Flags().Has(astiav.IOFormatFlagNofile) {
		return nil
	}
	if s.fd >= 0 {
		fd := s.fd
		s.fd = -1 // the muxer owns it now
		return openFD(s.fc, fd, s.tmp)
	}
	return openURL(s.fc, s.path, d)
}

// movMuxers are the muxers of the MP4 family, which take movflags.
var movMuxers = map[string]bool{"mp4": true, "mov": true, "3gp": true, "3g2": true, "ipod": true, "psp": true, "f4v": true}

// flagOptions are the muxer options the sink sets flags of itself; a value
// of the user's that starts with + or - adds to or removes from them.
var flagOptions = map[string]bool{"hls_flags": true, "movflags": true}

// muxerOptions are the sink's own muxer options, then the user's.
//
// HLS: in live runs the segments that left the playlist are deleted
// (delete_segments); sinkio.c writes each file under a temporary name.
// MP4/MOV files: the index is moved to the front when the file is
// finished (faststart), unless the faststart param is false.
func (s *Sink) muxerOptions() map[string]string {
	opts := map[string]string{}
	name := s.fc.OutputFormat().Name()
	switch {
	case name == "hls":
		opts["hls_time"] = strconv.FormatFloat(s.in.Params.Duration("hls_time").Seconds(), 'f', -1, 64)
		opts["hls_list_size"] = strconv.Itoa(s.in.Params.Int("hls_list_size"))
		if s.in.Live {
			opts["hls_flags"] = "+delete_segments"
		}
	case movMuxers[name] && s.tmp != "" && s.in.Params.Bool("faststart"):
		opts["movflags"] = "+faststart"
	}
	for k, v := range s.in.Params.Map("options") {
		if old, ok := opts[k]; ok && flagOptions[k] && (strings.HasPrefix(v, "+") || strings.HasPrefix(v, "-")) {
			v = old + v
		}
		opts[k] = v
	}
	return opts
}

// call runs one FFmpeg call that does I/O on the output (what says which,
// for errors): under the watchdog for a network output. It fails on the
// call's own error and on any I/O failure met meanwhile (a segment the HLS
// muxer could not write, a full disk), naming the file or URL.
func (s *Sink) call(ctx context.Context, sentinel error, what string, f func() error) error {
	if ctx.Err() != nil {
		// The interrupt comes from the context asynchronously: a run that
		// has stopped does no more I/O, whoever wins that race.
		s.interrupt()
		return fmt.Errorf("%w: %s: %s: %w", sentinel, s.url, what, context.Cause(ctx))
	}
	if s.dog != nil {
		s.dog.begin(what)
	}
	err := f()
	stalled := s.dog != nil && s.dog.end()
	if err == nil {
		if fl := s.io.failure(); fl != nil {
			err = fl
		}
	}
	if err == nil && !stalled {
		return nil
	}
	var ae astiav.Error
	if errors.As(err, &ae) {
		err = ffError(int(ae))
	}
	switch {
	case stalled:
		return fmt.Errorf("%w: %s: %s made no progress for %s (is the receiver still reading?)", ErrStalled, s.url, what, s.timeout)
	case errors.Is(err, syscall.ETIMEDOUT):
		return fmt.Errorf("%w: %s: %s made no progress for %s (is the receiver still reading?): %w", ErrStalled, s.url, what, s.timeout, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: %s: %w", sentinel, s.url, what, context.Cause(ctx))
	}
	if fl := s.io.failure(); fl != nil {
		return fmt.Errorf("%w: %s %s: %w", sentinel, fl.Op, secret.URL(fl.URL), fl.Err)
	}
	return fmt.Errorf("%w: %s: %s: %w", sentinel, s.url, what, err)
}

func (s *Sink) display() string {
	if s.path == "" {
		return "null"
	}
	return secret.URL(s.path)
}

func (s *Sink) write(ctx context.Context, e *stage.Msg) error {
	st := s.streams[e.Input]
	if st.st == nil {
		return nil // a stream that started too late to be in the header
	}
	pkt, err := codecs.PacketOf(e)
	if err != nil {
		return err
	}
	pkt.RescaleTs(codecs.AVRat(e.TimeBase), st.st.TimeBase())
	st.fixTimestamps(pkt)
	pkt.SetStreamIndex(st.st.Index())
	pkt.SetPos(-1)
	if err := s.call(ctx, ErrWrite, "writing", func() error { return s.fc.WriteInterleavedFrame(pkt) }); err != nil {
		return err
	}
	s.written++
	return nil
}

// Flush writes the trailer and gives a file output its real name.
func (s *Sink) Flush(ctx context.Context) (stage.Batch, error) {
	if !s.header {
		if err := s.tryHeader(ctx, true); err != nil {
			return nil, err
		}
		if !s.header {
			return nil, fmt.Errorf("%w: %s: no input sent any packet", ErrWrite, s.url)
		}
	}
	if err := s.call(ctx, ErrWrite, "writing the trailer", s.fc.WriteTrailer); err != nil {
		return nil, err
	}
	if err := s.call(ctx, ErrWrite, "closing", func() error { return closePB(s.fc) }); err != nil {
		return nil, err
	}
	if s.fc.OutputFormat().Name() == "hls" && s.tmp == "" && !s.network {
		if err := checkPlaylist(s.path); err != nil {
			return nil, err
		}
	}
	if s.tmp != "" {
		if err := os.Rename(s.tmp, s.path); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrWrite, err)
		}
	}
	s.done = true
	s.in.Log.Info("output finished", "path", s.url, "packets", s.written, "elapsed", time.Since(s.started).Round(time.Millisecond).String())
	return nil, nil
}

// checkPlaylist makes sure the HLS muxer left a playlist (it does not
// fail when it cannot write one).
func checkPlaylist(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case err != nil:
		return fmt.Errorf("%w: the playlist was not written: %w", ErrWrite, err)
	case !fi.Mode().IsRegular() || fi.Size() == 0:
		return fmt.Errorf("%w: %s: the playlist was not written (%d bytes, mode %s)", ErrWrite, path, fi.Size(), fi.Mode())
	}
	return nil
}

// Close releases the muxer. An output that was not finished is removed, so
// nothing half-written is left looking complete.
func (s *Sink) Close() error {
	for _, e := range s.pending {
		e.Release()
	}
	s.pending = nil
	if s.stopCtx != nil {
		s.stopCtx()
	}
	if s.dog != nil {
		s.dog.stop()
	}
	if s.fc != nil {
		if !s.done && s.intr != nil {
			s.interrupt() // nothing may block on the way out
		}
		_ = closePB(s.fc)
		s.fc.Free()
		s.fc = nil
	}
	if s.fd >= 0 {
		_ = syscall.Close(s.fd)
		s.fd = -1
	}
	s.io.free()
	if !s.done && s.tmp != "" {
		if err := os.Remove(s.tmp); err == nil {
			s.in.Log.Warn("run did not finish: partial output removed", "path", s.tmp)
		}
	}
	return nil
}
