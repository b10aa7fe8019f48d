package infer_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/stages/infer/onnx"
)

// checkW and checkH are the input size of UltraFace RFB-320.
const checkW, checkH = 320, 240

// scored is the best face a checker finds on one frame.
type scored struct {
	Score          float32
	X1, Y1, X2, Y2 float32 // frame-normalised
}

func (s scored) String() string {
	return fmt.Sprintf("%.2f at %.2f,%.2f-%.2f,%.2f", s.Score, s.X1, s.Y1, s.X2, s.Y2)
}

// checker scores faces as an outside tool would, sharing nothing with the
// infer stage but the model file: the ffmpeg CLI scales every frame to
// 320x240 (stretched) with swscale flags of its own choosing and converts
// it to RGB, and ONNX Runtime runs UltraFace RFB-320 on those bytes.
type checker struct {
	sess *onnx.Session
	buf  []float32
}

func newChecker(t *testing.T) *checker {
	t.Helper()
	s, err := onnx.Open(filepath.Join(e2e.Models(t), "ultraface", "version-RFB-320.onnx"), onnx.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &checker{sess: s, buf: make([]float32, 3*checkW*checkH)}
}

// checkScalers are the two ways the checker sizes frames: the ffmpeg CLI's
// default (swscale, bicubic) and another library altogether (zimg, the
// zscale filter, Lanczos); a detector's scores depend on the scaler.
var checkScalers = []struct{ name, vf string }{
	{"swscale bicubic", fmt.Sprintf("scale=%d:%d", checkW, checkH)},
	{"zimg lanczos", fmt.Sprintf("zscale=w=%d:h=%d:filter=lanczos", checkW, checkH)},
}

// scores returns the best face of every frame of video, sized to 320x240
// (stretched) by the ffmpeg filter vf (see checkScalers).
func (c *checker) scores(t *testing.T, video, vf string) []scored {
	t.Helper()
	cmd := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-nostdin", "-i", video, "-vf", vf+",format=rgb24", "-fps_mode", "passthrough", "-f", "rawvideo", "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", vf, err, stderr.Bytes())
	}
	const size = checkW * checkH * 3
	if len(raw) == 0 || len(raw)%size != 0 {
		t.Fatalf("ffmpeg %s gave %d bytes, not whole %dx%d RGB frames", vf, len(raw), checkW, checkH)
	}
	var out []scored
	for off := 0; off < len(raw); off += size {
		out = append(out, c.score(t, raw[off:off+size]))
	}
	return out
}

// score runs the model on one 320x240 RGB picture.
func (c *checker) score(t *testing.T, rgb []byte) scored {
	const plane = checkW * checkH
	for i := 0; i < plane; i++ {
		for ch := 0; ch < 3; ch++ {
			c.buf[ch*plane+i] = (float32(rgb[3*i+ch]) - 127) / 128
		}
	}
	outs, err := c.sess.Run([]onnx.Tensor{{Shape: []int64{1, 3, checkH, checkW}, Data: c.buf}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	scores, boxes := outs[0].Data, outs[1].Data
	var best scored
	for i := 0; 2*i+1 < len(scores) && 4*i+3 < len(boxes); i++ {
		if s := scores[2*i+1]; s > best.Score {
			best = scored{s, boxes[4*i], boxes[4*i+1], boxes[4*i+2], boxes[4*i+3]}
		}
	}
	return best
}
