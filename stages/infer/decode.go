package infer

import (
	"math"
	"sort"

	"github.com/avflow/avflow/pipeline/envelope"
)

// box is a detection in model-input coordinates normalised to 0..1.
type box = envelope.Detection

// iou is the intersection over union of two boxes.
func iou(a, b box) float32 {
	ix1, iy1 := max(a.X1, b.X1), max(a.Y1, b.Y1)
	ix2, iy2 := min(a.X2, b.X2), min(a.Y2, b.Y2)
	iw, ih := ix2-ix1, iy2-iy1
	if iw <= 0 || ih <= 0 {
		return 0
	}
	inter := iw * ih
	union := (a.X2-a.X1)*(a.Y2-a.Y1) + (b.X2-b.X1)*(b.Y2-b.Y1) - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}

// nms keeps the best box of each overlapping group (per class), best first.
func nms(in []box, thr float32) []box {
	sort.Slice(in, func(i, j int) bool { return in[i].Score > in[j].Score })
	out := in[:0:0]
	for _, b := range in {
		keep := true
		for _, k := range out {
			if k.Class == b.Class && iou(k, b) > thr {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, b)
		}
	}
	return out
}

// union merges the boxes of one class that overlap by more than thr into
// the box covering them, with the best one's score and other fields, best
// first: for hiding, what any of several looks found is what to cover.
func union(in []box, thr float32) []box {
	sort.SliceStable(in, func(i, j int) bool { return in[i].Score > in[j].Score })
	out := in[:0:0]
	for _, b := range in {
		merged := false
		for k := range out {
			if o := &out[k]; o.Class == b.Class && iou(*o, b) > thr {
				o.X1, o.Y1, o.X2, o.Y2 = min(o.X1, b.X1), min(o.Y1, b.Y1), max(o.X2, b.X2), max(o.Y2, b.Y2)
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, b)
		}
	}
	return out
}

func clamp01(v float32) float32 { return min(max(v, 0), 1) }

// decodeUltraFace reads scores [1,N,2] (background, face) and boxes [1,N,4]
// (x1,y1,x2,y2 normalised).
func decodeUltraFace(scores, boxes []float32, thr, nmsIoU float32) []box {
	n := len(scores) / 2
	var out []box
	for i := 0; i < n && 4*i+3 < len(boxes); i++ {
		s := scores[2*i+1]
		if s < thr {
			continue
		}
		b := boxes[4*i : 4*i+4]
		out = append(out, box{X1: clamp01(b[0]), Y1: clamp01(b[1]), X2: clamp01(b[2]), Y2: clamp01(b[3]), Score: s, Class: 1})
	}
	return nms(out, nmsIoU)
}

// decodeYOLO reads the YOLOv5 layout [1,N,5+C] (cx,cy,w,h,objectness,
// class scores) or the YOLOv8/11 layout [1,4+C,N] (cx,cy,w,h, class
// scores), in input pixels; w and h are the input size.
func decodeYOLO(data []float32, shape []int64, layout string, inW, inH int, thr, nmsIoU float32) []box {
	if len(shape) != 3 {
		return nil
	}
	a, b := int(shape[1]), int(shape[2])
	v8 := layout == "v8" || (layout == "" && a < b) // [1,84,8400]: attributes first
	var n, attrs int
	if v8 {
		attrs, n = a, b
	} else {
		n, attrs = a, b
	}
	if len(data) < n*attrs || attrs < 5 {
		return nil
	}
	at := func(i, k int) float32 {
		if v8 {
			return data[k*n+i]
		}
		return data[i*attrs+k]
	}
	first := 4
	if !v8 {
		first = 5
	}
	var out []box
	for i := 0; i < n; i++ {
		best, cls := float32(0), 0
		for k := first; k < attrs; k++ {
			if s := at(i, k); s > best {
				best, cls = s, k-first
			}
		}
		if !v8 {
			best *= at(i, 4)
		}
		if best < thr {
			continue
		}
		cx, cy, w, h := at(i, 0), at(i, 1), at(i, 2), at(i, 3)
		out = append(out, box{
			X1: clamp01((cx - w/2) / float32(inW)), Y1: clamp01((cy - h/2) / float32(inH)),
			X2: clamp01((cx + w/2) / float32(inW)), Y2: clamp01((cy + h/2) / float32(inH)),
			Score: best, Class: int32(cls),
		})
	}
	return nms(out, nmsIoU)
}

// decodeClassifier returns the top k classes of [1,C] scores (softmax is
// applied when they are not already probabilities).
func decodeClassifier(scores []float32, k int) []box {
	p := append([]float32(nil), scores...)
	var sum float32
	neg := false
	for _, v := range p {
		sum += v
		neg = neg || v < 0
	}
	if neg || math.Abs(float64(sum)-1) > 0.01 {
		m := p[0]
		for _, v := range p {
			m = max(m, v)
		}
		sum = 0
		for i, v := range p {
			p[i] = float32(math.Exp(float64(v - m)))
			sum += p[i]
		}
		for i := range p {
			p[i] /= sum
		}
	}
	idx := make([]int, len(p))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(i, j int) bool { return p[idx[i]] > p[idx[j]] })
	k = max(1, min(k, len(idx)))
	out := make([]box, k)
	for i := 0; i < k; i++ {
		out[i] = box{X1: 0, Y1: 0, X2: 1, Y2: 1, Score: p[idx[i]], Class: int32(idx[i])}
	}
	return out
}

// decodeDBNet turns a text probability map [1,1,H,W] into text boxes: the
// connected regions above thr whose mean probability reaches boxThr, grown
// by unclip (area * ratio / perimeter, as DBNet's post-processing does).
func decodeDBNet(prob []float32, w, h int, thr, boxThr, unclip float32) []box {
	seen := make([]bool, len(prob))
	var out []box
	stack := make([]int, 0, 1024)
	for start := range prob {
		if seen[start] || prob[start] < thr {
			continue
		}
		minX, minY, maxX, maxY := w, h, -1, -1
		var sum float32
		count := 0
		stack = append(stack[:0], start)
		seen[start] = true
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			x, y := i%w, i/w
			minX, minY, maxX, maxY = min(minX, x), min(minY, y), max(maxX, x), max(maxY, y)
			sum += prob[i]
			count++
			for _, j := range [4]int{i - 1, i + 1, i - w, i + w} {
				if j < 0 || j >= len(prob) || seen[j] || prob[j] < thr {
					continue
				}
				if (j == i-1 && x == 0) || (j == i+1 && x == w-1) {
					continue
				}
				seen[j] = true
				stack = append(stack, j)
			}
		}
		bw, bh := float32(maxX-minX+1), float32(maxY-minY+1)
		if bw < 3 || bh < 3 || sum/float32(count) < boxThr {
			continue
		}
		d := bw * bh * unclip / (2 * (bw + bh))
		out = append(out, box{
			X1: clamp01((float32(minX) - d) / float32(w)), Y1: clamp01((float32(minY) - d) / float32(h)),
			X2: clamp01((float32(maxX+1) + d) / float32(w)), Y2: clamp01((float32(maxY+1) + d) / float32(h)),
			Score: sum / float32(count),
		})
	}
	// Reading order: top to bottom, then left to right.
	sort.Slice(out, func(i, j int) bool {
		if math.Abs(float64(out[i].Y1-out[j].Y1)) > 0.02 {
			return out[i].Y1 < out[j].Y1
		}
		return out[i].X1 < out[j].X1
	})
	return out
}

// decodeCTC reads [1,T,C] class probabilities: best class per step,
// repeats collapsed, blanks (class 0) dropped. charset[i-1] is class i; with
// space, the last class is a space.
func decodeCTC(probs []float32, steps, classes int, charset []string, space bool) (string, float32) {
	var text []rune
	var score float32
	n := 0
	prev := -1
	for t := 0; t < steps; t++ {
		row := probs[t*classes : (t+1)*classes]
		best, bi := row[0], 0
		for c, v := range row {
			if v > best {
				best, bi = v, c
			}
		}
		if bi != 0 && bi != prev {
			switch {
			case bi-1 < len(charset):
				text = append(text, []rune(charset[bi-1])...)
			case space && bi == classes-1:
				text = append(text, ' ')
			}
			score += best
			n++
		}
		prev = bi
	}
	if n > 0 {
		score /= float32(n)
	}
	return string(text), score
}
