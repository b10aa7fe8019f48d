// Package sink is the sink stage: it muxes packets from one or more encode
// (or copy) stages into a file (MP4, MKV, ...), HLS, an RTMP/SRT URL, or null.
package sink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
)

// Sentinel errors.
var (
	ErrOpen  = errors.New("sink: opening output failed")
	ErrWrite = errors.New("sink: writing output failed")
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
			{Name: "path", Type: pipeline.TypeString, Required: true, Doc: "output file (relative to the pipeline file), .m3u8 for HLS, rtmp:// or srt:// URL, or null"},
			{Name: "format", Type: pipeline.TypeString, Doc: "force the muxer (mp4, matroska, hls, flv, mpegts, null); empty guesses from path"},
			{Name: "hls_time", Type: pipeline.TypeDuration, Default: "2s", Doc: "HLS: target segment length"},
			{Name: "hls_list_size", Type: pipeline.TypeInt, Default: 6, Doc: "HLS: segments kept in the playlist (0: all)"},
			{Name: "options", Type: pipeline.TypeMap, Doc: "muxer options, e.g. {movflags: +faststart}"},
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
	in      pipeline.Init
	path    string // final path or URL
	tmp     string // file being written ("" when not a plain file)
	format  string
	fc      *astiav.FormatContext
	pb      *astiav.IOContext
	streams []*stream
	pending []*envelope.Envelope
	header  bool
	done    bool
	written int64
	started time.Time
}

// New prepares the output; it is opened once every input has sent its first packet.
func New(_ context.Context, in pipeline.Init) (pipeline.Stage, error) {
	s := &Sink{in: in, format: in.Params.String("format"), started: time.Now()}
	for range in.Inputs {
		s.streams = append(s.streams, &stream{last: astiav.NoPtsValue})
	}
	path := in.Params.String("path")
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
		s.path = in.Path(path)
		if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrOpen, err)
		}
		if s.format == "" && strings.HasSuffix(strings.ToLower(path), ".m3u8") {
			s.format = "hls"
		}
		if s.format != "hls" {
			s.tmp = s.path + PartialSuffix
		}
	}
	// Fail early on a muxer that does not exist.
	fc, err := astiav.AllocOutputFormatContext(nil, s.format, s.path)
	if err != nil || fc == nil {
		return nil, fmt.Errorf("%w: %s: no muxer for this name (set format): %v", ErrOpen, path, err)
	}
	s.fc = fc
	return s, nil
}

// Process takes packets; they are held until every input has started.
func (s *Sink) Process(_ context.Context, in pipeline.Batch) (pipeline.Batch, error) {
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
			if err := s.tryHeader(len(s.pending) > maxPending); err != nil {
				return nil, err
			}
			continue
		}
		if err := s.write(e); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// EndInput notes that an input is over (it may never have sent anything).
func (s *Sink) EndInput(_ context.Context, i int) (pipeline.Batch, error) {
	s.streams[i].ended = true
	if !s.header {
		return nil, s.tryHeader(false)
	}
	return nil, nil
}

func (s *Sink) tryHeader(force bool) error {
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
	if err := s.writeHeader(); err != nil {
		return err
	}
	pending := s.pending
	s.pending = nil
	for i, e := range pending {
		if err := s.write(e); err != nil {
			for _, r := range pending[i:] {
				r.Release()
			}
			return err
		}
		e.Release()
	}
	return nil
}

func (s *Sink) writeHeader() error {
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
	target := s.path
	if s.tmp != "" {
		target = s.tmp
	}
	if !s.fc.OutputFormat().Flags().Has(astiav.IOFormatFlagNofile) {
		pb, err := astiav.OpenIOContext(target, astiav.NewIOContextFlags(astiav.IOContextFlagWrite))
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrOpen, target, err)
		}
		s.pb = pb
		s.fc.SetPb(pb)
	}
	d := astiav.NewDictionary()
	defer d.Free()
	opts := map[string]string{}
	if s.fc.OutputFormat().Name() == "hls" {
		opts["hls_time"] = strconv.FormatFloat(s.in.Params.Duration("hls_time").Seconds(), 'f', -1, 64)
		opts["hls_list_size"] = strconv.Itoa(s.in.Params.Int("hls_list_size"))
	}
	for k, v := range s.in.Params.Map("options") {
		opts[k] = v
	}
	for k, v := range opts {
		if err := d.Set(k, v, 0); err != nil {
			return fmt.Errorf("%w: option %s: %w", ErrOpen, k, err)
		}
	}
	if err := s.fc.WriteHeader(d); err != nil {
		return fmt.Errorf("%w: %s: writing header: %w", ErrOpen, s.display(), err)
	}
	if left := d.Get("", nil, astiav.NewDictionaryFlags(astiav.DictionaryFlagIgnoreSuffix)); left != nil {
		return fmt.Errorf("%w: muxer %s does not know option %q", ErrOpen, s.fc.OutputFormat().Name(), left.Key())
	}
	s.header = true
	s.in.Log.Info("output opened", "path", s.display(), "format", s.fc.OutputFormat().Name(), "streams", s.fc.NbStreams())
	return nil
}

func (s *Sink) display() string {
	if s.path == "" {
		return "null"
	}
	return s.path
}

func (s *Sink) write(e *envelope.Envelope) error {
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
	if err := s.fc.WriteInterleavedFrame(pkt); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrWrite, s.display(), err)
	}
	s.written++
	return nil
}

// Flush writes the trailer and gives a file output its real name.
func (s *Sink) Flush(context.Context) (pipeline.Batch, error) {
	if !s.header {
		if err := s.tryHeader(true); err != nil {
			return nil, err
		}
		if !s.header {
			return nil, fmt.Errorf("%w: %s: no input sent any packet", ErrWrite, s.display())
		}
	}
	if err := s.fc.WriteTrailer(); err != nil {
		return nil, fmt.Errorf("%w: %s: writing trailer: %w", ErrWrite, s.display(), err)
	}
	if s.pb != nil {
		if err := s.pb.Close(); err != nil {
			return nil, fmt.Errorf("%w: %s: closing: %w", ErrWrite, s.display(), err)
		}
		s.pb = nil
	}
	if s.tmp != "" {
		if err := os.Rename(s.tmp, s.path); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrWrite, err)
		}
	}
	s.done = true
	s.in.Log.Info("output finished", "path", s.display(), "packets", s.written, "elapsed", time.Since(s.started).Round(time.Millisecond).String())
	return nil, nil
}

// Close releases the muxer. An output that was not finished is removed, so
// nothing half-written is left looking complete.
func (s *Sink) Close() error {
	for _, e := range s.pending {
		e.Release()
	}
	s.pending = nil
	if s.pb != nil {
		_ = s.pb.Close()
		s.pb = nil
	}
	if s.fc != nil {
		s.fc.Free()
		s.fc = nil
	}
	if !s.done && s.tmp != "" {
		if err := os.Remove(s.tmp); err == nil {
			s.in.Log.Warn("run did not finish: partial output removed", "path", s.tmp)
		}
	}
	return nil
}
