package infer_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
)

// edgeCut is a way to cut a face with the frame's edge: the fraction cut
// of the face's box lies beyond edge.
type edgeCut struct {
	edge string // left, right, top or bottom
	cut  float64
}

// edgeCuts are the cuts the privacy test makes of every facecam clip: half
// a face beyond the left, right or top edge (an ear and an eye, or the
// forehead and eyes, gone), and the chin and mouth beyond the bottom.
var edgeCuts = []edgeCut{{"left", 0.5}, {"right", 0.5}, {"top", 0.5}, {"bottom", 0.3}}

// faceBox is the median box (frame-normalised x1, y1, x2, y2) of the
// frames where the checker finds a face above 0.5; false when it finds
// none.
func faceBox(scores []scored) ([4]float64, bool) {
	var x1, y1, x2, y2 []float64
	for _, s := range scores {
		if s.Score > 0.5 {
			x1, y1 = append(x1, float64(s.X1)), append(y1, float64(s.Y1))
			x2, y2 = append(x2, float64(s.X2)), append(y2, float64(s.Y2))
		}
	}
	if len(x1) == 0 {
		return [4]float64{}, false
	}
	med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	return [4]float64{med(x1), med(y1), med(x2), med(y2)}, true
}

// cropWindow is the ffmpeg crop (w, h, x, y, even numbers) of a window of
// a w x h frame, six face widths wide and 4:3 where the frame allows,
// placed so that its edge cuts the fraction c.cut of the face box b off and
// the face is centred along that edge. A window cut below a face near the
// top of the frame is less tall, up to 2:1. False when the window would be
// under four face widths wide: a close-up, not a face at the edge of a
// scene (and one whose blur alone changes the picture too much).
func cropWindow(b [4]float64, c edgeCut, w, h int) ([4]int, bool) {
	W, H := float64(w), float64(h)
	fx1, fy1, fx2, fy2 := b[0]*W, b[1]*H, b[2]*W, b[3]*H
	fw, fh := fx2-fx1, fy2-fy1
	ww := min(6*fw, W, H*4/3)
	wh := ww * 3 / 4
	// The window's far side is ww or wh beyond the cut, as the frame allows.
	var x1, y1, x2, y2 float64
	centre := func(c, size, n float64) (float64, float64) {
		lo := min(max(c-size/2, 0), n-size)
		return lo, lo + size
	}
	switch c.edge {
	case "left":
		x1 = fx1 + c.cut*fw
		x2 = min(x1+ww, W)
		wh = min(wh, (x2-x1)*3/4)
		y1, y2 = centre((fy1+fy2)/2, wh, H)
	case "right":
		x2 = fx2 - c.cut*fw
		x1 = max(x2-ww, 0)
		wh = min(wh, (x2-x1)*3/4)
		y1, y2 = centre((fy1+fy2)/2, wh, H)
	case "top":
		y1 = fy1 + c.cut*fh
		y2 = min(y1+wh, H)
		ww = min(ww, 2*(y2-y1))
		x1, x2 = centre((fx1+fx2)/2, ww, W)
	default:
		y2 = fy2 - c.cut*fh
		y1 = max(y2-wh, 0)
		ww = min(ww, 2*(y2-y1))
		x1, x2 = centre((fx1+fx2)/2, ww, W)
	}
	even := func(v float64) int { return int(v/2) * 2 }
	return [4]int{even(x2 - x1), even(y2 - y1), even(x1), even(y1)}, x2-x1 >= 4*fw
}

// cropClip encodes the window crop of clip into dst with the ffmpeg CLI,
// scaled back to the clip's width (a camera framing the scene more
// tightly), x264 nearly lossless.
func cropClip(t *testing.T, clip, dst string, crop [4]int, width int) {
	t.Helper()
	vf := fmt.Sprintf("crop=%d:%d:%d:%d,scale=%d:-2:flags=lanczos,setsar=1", crop[0], crop[1], crop[2], crop[3], width)
	out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", clip, "-vf", vf, "-an",
		"-c:v", "libx264", "-preset", "veryfast", "-crf", "12", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg %s %s: %v\n%s", filepath.Base(clip), vf, err, out)
	}
}

// videoSize is a video's width and height, by ffprobe.
func videoSize(t *testing.T, video string) (int, int) {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v:0",
		"-show_entries", "stream=width,height", "-of", "csv=p=0", video).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", video, err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), ",")
	if len(f) != 2 {
		t.Fatalf("ffprobe %s: size %q", video, out)
	}
	w, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		t.Fatalf("ffprobe %s: size %q", video, out)
	}
	return w, h
}

func TestCropWindow(t *testing.T) {
	// A face 64x96 at 288,96 of a 640x480 frame.
	b := [4]float64{288.0 / 640, 96.0 / 480, 352.0 / 640, 192.0 / 480}
	tests := []struct {
		cut  edgeCut
		box  [4]float64
		want [4]int // w, h, x, y
		ok   bool
	}{
		{edgeCut{"right", 0.5}, b, [4]int{320, 240, 0, 24}, true},    // x2 = 352-32
		{edgeCut{"left", 0.5}, b, [4]int{320, 240, 320, 24}, true},   // x1 = 288+32
		{edgeCut{"top", 0.5}, b, [4]int{384, 288, 128, 144}, true},   // y1 = 96+48, 6 face widths
		{edgeCut{"bottom", 0.25}, b, [4]int{336, 168, 152, 0}, true}, // y2 = 192-24, 2:1
		// The face at the top of the frame: 144x72 would be a close-up.
		{edgeCut{"bottom", 0.25}, [4]float64{b[0], 0, b[2], 96.0 / 480}, [4]int{144, 72, 248, 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.cut.edge, func(t *testing.T) {
			if got, ok := cropWindow(tt.box, tt.cut, 640, 480); got != tt.want || ok != tt.ok {
				t.Fatalf("got %v %t, want %v %t", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// edgeClip writes to dst a crop of clip whose edge cuts c.cut of the face
// the checker finds in it (scores: the clip's), or less where the checker
// no longer finds a face above 0.5 in what is left, so that the clip tests
// something: it tries cuts of 0.1 less down to 0.2. It returns the cut,
// and false when the clip has no room for such a window (see cropWindow).
func edgeClip(t *testing.T, chk *checker, clip string, scores []scored, c edgeCut, dst string) (edgeCut, bool) {
	t.Helper()
	b, ok := faceBox(scores)
	if !ok {
		t.Fatalf("%s: the checker finds no face to cut", filepath.Base(clip))
	}
	w, h := videoSize(t, clip)
	for ; c.cut > 0.15; c.cut -= 0.1 {
		crop, ok := cropWindow(b, c, w, h)
		if !ok {
			return c, false
		}
		cropClip(t, clip, dst, crop, w)
		if _, ok := faceBox(chk.scores(t, dst, checkScalers[0].vf)); ok {
			return c, true
		}
	}
	t.Fatalf("%s: no cut at the %s edge leaves a face the checker finds", filepath.Base(clip), c.edge)
	return c, false
}
