package infer

import (
	"encoding/binary"
	"math"
)

// float32frombits reads a little-endian float32 (FFmpeg's flt samples on
// every platform avflow builds for).
func float32frombits(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }
