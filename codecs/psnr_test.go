package codecs

import (
	"fmt"
	"math"
)

func ExamplePSNR() {
	a := []byte{10, 20, 30, 40}
	b := []byte{10, 20, 30, 41} // one sample off by one
	fmt.Printf("%.1f dB\n", PSNR(a, b))
	fmt.Println(math.IsInf(PSNR(a, a), 1))
	// Output:
	// 54.2 dB
	// true
}
