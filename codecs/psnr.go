package codecs

import "math"

// PSNR compares two equally long runs of 8-bit samples (planes, whole raw
// pictures) and returns the peak signal-to-noise ratio in dB; +Inf when
// they are identical.
func PSNR(a, b []byte) float64 {
	var se float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		se += d * d
	}
	if se == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(255*255*float64(len(a))/se)
}
