// Package source is the source stage: it demuxes a file, a network URL or an
// FFmpeg lavfi test source into compressed packets.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
)

// Sentinel errors.
var (
	ErrOpen     = errors.New("source: opening input failed")
	ErrNoInput  = errors.New("source: input file not found")
	ErrNoStream = errors.New("source: input has no usable stream")
	ErrCorrupt  = errors.New("source: input is truncated or corrupt")
)

func init() {
	astiav.RegisterAllDevices()
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "source",
		Summary: "Demux a file, URL (http, rtsp, rtmp, srt...) or lavfi test source into video and audio packets.",
		Params: []pipeline.Param{
			{Name: "url", Type: pipeline.TypeString, Required: true, Doc: "file path (relative to the pipeline file), URL, or lavfi:<graph> such as lavfi:testsrc2=size=1280x720:rate=30"},
			{Name: "format", Type: pipeline.TypeString, Doc: "force the input format (e.g. lavfi, mpegts); empty probes it"},
			{Name: "options", Type: pipeline.TypeMap, Doc: "demuxer and protocol options, e.g. {rtsp_transport: tcp}"},
			{Name: "realtime", Type: pipeline.TypeBool, Default: false, Doc: "pace packets at the media's own rate (live simulation)"},
			{Name: "loop", Type: pipeline.TypeBool, Default: false, Doc: "start again at the end, with continuous timestamps"},
			{Name: "max_frames", Type: pipeline.TypeInt, Default: 0, Doc: "stop after this many video packets (0: no limit)"},
			{Name: "video", Type: pipeline.TypeBool, Default: true, Doc: "read the first video stream"},
			{Name: "audio", Type: pipeline.TypeBool, Default: true, Doc: "read the first audio stream"},
		},
		MinInputs: 0, MaxInputs: 0,
		Ports: func(p pipeline.Params, _ []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{
				{Name: "video", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaVideo}},
				{Name: "audio", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaAudio}},
			}, nil
		},
		Check: func(p pipeline.Params, dir string) error {
			url, format := p.String("url"), p.String("format")
			if isLocalFile(url, format) {
				path := pipeline.ResolvePath(dir, url)
				if _, err := os.Stat(path); err != nil {
					return fmt.Errorf("%w: %s", ErrNoInput, path)
				}
			}
			return nil
		},
		New: New,
	})
}

func isLocalFile(url, format string) bool {
	return format == "" && !strings.HasPrefix(url, "lavfi:") && !strings.Contains(url, "://")
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
	in       pipeline.Init
	url      string
	fc       *astiav.FormatContext
	intr     astiav.IOInterrupter
	streams  map[int]*stream
	pkt      *astiav.Packet
	realtime bool
	loop     bool
	max      int
	vcount   int
	total    int64
	declared int64 // video packets the container's index announces (0: unknown)
	start    time.Time
	stopIntr func() bool
	eof      bool
}

// New opens the input.
func New(ctx context.Context, in pipeline.Init) (pipeline.Stage, error) {
	s := &Source{in: in, streams: map[int]*stream{}, realtime: in.Params.Bool("realtime"),
		loop: in.Params.Bool("loop"), max: in.Params.Int("max_frames")}
	url, format := in.Params.String("url"), in.Params.String("format")
	var ifmt *astiav.InputFormat
	if strings.HasPrefix(url, "lavfi:") {
		url, format = strings.TrimPrefix(url, "lavfi:"), "lavfi"
	} else if isLocalFile(url, format) {
		url = in.Path(url)
	}
	s.url = url
	if format != "" {
		if ifmt = astiav.FindInputFormat(format); ifmt == nil {
			return nil, fmt.Errorf("%w: %s: unknown input format %q", ErrOpen, url, format)
		}
	}
	d := astiav.NewDictionary()
	defer d.Free()
	for k, v := range in.Params.Map("options") {
		if err := d.Set(k, v, 0); err != nil {
			return nil, fmt.Errorf("%w: option %s: %w", ErrOpen, k, err)
		}
	}
	s.fc = astiav.AllocFormatContext()
	if s.fc == nil {
		return nil, fmt.Errorf("%w: allocating format context", ErrOpen)
	}
	s.intr = s.fc.SetInterruptCallback()
	if err := s.fc.OpenInput(url, ifmt, d); err != nil {
		s.fc.Free()
		s.fc = nil
		return nil, fmt.Errorf("%w: %s: %w", ErrOpen, url, err)
	}
	if err := s.fc.FindStreamInfo(nil); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w: %s: reading stream info: %w", ErrOpen, url, err)
	}
	wantVideo, wantAudio := in.Params.Bool("video"), in.Params.Bool("audio")
	for _, st := range s.fc.Streams() {
		cp := st.CodecParameters()
		media := codecs.MediaOf(cp.MediaType())
		switch {
		case media == envelope.MediaVideo && wantVideo && !s.has(media):
			fr := st.AvgFrameRate()
			if fr.Num() == 0 {
				fr = st.RFrameRate()
			}
			s.streams[st.Index()] = &stream{index: st.Index(), media: media, port: "video", tb: st.TimeBase(), params: codecs.Params(cp, fr)}
			if n := st.NbFrames(); n > 0 {
				s.total, s.declared = n, n
			} else if d := s.fc.Duration(); d > 0 && fr.Num() > 0 {
				s.total = int64(float64(d) / 1e6 * fr.Float64())
			}
		case media == envelope.MediaAudio && wantAudio && !s.has(media):
			s.streams[st.Index()] = &stream{index: st.Index(), media: media, port: "audio", tb: st.TimeBase(), params: codecs.Params(cp, astiav.NewRational(0, 1))}
		}
	}
	if len(s.streams) == 0 {
		s.Close()
		return nil, fmt.Errorf("%w: %s has no video or audio stream", ErrNoStream, url)
	}
	for _, st := range s.streams {
		in.Log.Info("input stream", "url", url, "port", st.port, "codec", st.params.Codec, "width", st.params.Width, "height", st.params.Height,
			"sample_rate", st.params.SampleRate, "time_base", st.tb.String())
	}
	if !s.has(envelope.MediaAudio) && wantAudio {
		in.Log.Info("input has no audio stream: the audio port ends at once", "url", url)
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

func (s *Source) has(m envelope.Media) bool {
	for _, st := range s.streams {
		if st.media == m {
			return true
		}
	}
	return false
}

// TotalFrames is the expected number of video packets (0: unknown or endless).
func (s *Source) TotalFrames() int64 { return s.total }

// Process reads the next packet of a selected stream.
func (s *Source) Process(ctx context.Context, _ pipeline.Batch) (pipeline.Batch, error) {
	if s.stopIntr == nil {
		s.stopIntr = context.AfterFunc(ctx, s.intr.Interrupt)
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
				s.eof = true
				// A container whose index announces more frames than it holds was cut short.
				if s.max == 0 && s.declared > 0 && float64(s.vcount) < 0.99*float64(s.declared) {
					return nil, fmt.Errorf("%w: %s ended after %d of the %d video frames its index announces", ErrCorrupt, s.url, s.vcount, s.declared)
				}
				return nil, io.EOF
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("source: reading %s failed: %w", s.url, err)
		}
		st, ok := s.streams[s.pkt.StreamIndex()]
		if !ok {
			s.pkt.Unref()
			continue
		}
		if s.pkt.Flags().Has(astiav.PacketFlagCorrupt) && !s.in.Live {
			s.pkt.Unref()
			return nil, fmt.Errorf("%w: %s: %s packet %d is damaged (the file may be cut short)", ErrCorrupt, s.url, st.port, s.vcount)
		}
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
		e := codecs.PacketEnvelope(p, st.media, st.params, st.tb)
		e.Port = st.port
		if st.media == envelope.MediaVideo {
			s.vcount++
		}
		return pipeline.Batch{e}, nil
	}
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
	if s.stopIntr != nil {
		s.stopIntr()
	}
	if s.pkt != nil {
		s.pkt.Free()
		s.pkt = nil
	}
	if s.fc != nil {
		s.fc.CloseInput()
		s.fc.Free()
		s.fc = nil
	}
	return nil
}
