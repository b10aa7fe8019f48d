package envelope

import (
	"encoding/binary"
	"fmt"
)

// MaxElements is the most entries an array or map of a message may
// declare (an envelope's detections, segments, stamps, meta).
const MaxElements = 1 << 16

// CheckLengths walks the msgpack value b holds and checks that every
// length it declares (of a string, binary, extension, array or map) fits
// in the bytes that follow, and that no array or map declares more than
// maxElems entries, before a decoder allocates what they claim: msgpack's
// reflection decoder makes a slice of the declared length, so a forged
// message of 16 bytes claiming 4 billion boxes asks for hundreds of GB
// (a fatal out-of-memory no recover catches). b must hold exactly one
// value. It allocates nothing.
func CheckLengths(b []byte, maxElems int) error {
	pending := 1 // values still to read
	for pending > 0 {
		if len(b) == 0 {
			return fmt.Errorf("%w: truncated (%d values missing)", ErrMalformed, pending)
		}
		pending--
		head, skip, elems, err := valueHeader(b)
		if err != nil {
			return err
		}
		if elems > maxElems || elems > len(b)-head {
			return fmt.Errorf("%w: a container declares %d entries in %d bytes (at most %d)", ErrMalformed, elems, len(b)-head, maxElems)
		}
		if skip > len(b)-head {
			return fmt.Errorf("%w: a value declares %d bytes, %d follow", ErrMalformed, skip, len(b)-head)
		}
		pending += elems
		b = b[head+skip:]
	}
	if len(b) > 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
	}
	return nil
}

// valueHeader reads the header of the msgpack value at b[0]: its size
// (head), the bytes of data after it (skip) and the values it contains
// (elems: entries of an array, keys and values of a map).
func valueHeader(b []byte) (head, skip, elems int, err error) {
	c := b[0]
	size := func(n int) (int, error) { // a big-endian length of n bytes after c
		if len(b) < 1+n {
			return 0, fmt.Errorf("%w: truncated length", ErrMalformed)
		}
		switch n {
		case 1:
			return int(b[1]), nil
		case 2:
			return int(binary.BigEndian.Uint16(b[1:])), nil
		}
		v := binary.BigEndian.Uint32(b[1:])
		if uint64(v) > uint64(len(b)) { // also keeps int in range on 32-bit
			return int(min(uint64(v), 1<<31-1)), nil
		}
		return int(v), nil
	}
	var n int
	switch {
	case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixints, nil, bools
		return 1, 0, 0, nil
	case c >= 0x80 && c <= 0x8f: // fixmap
		return 1, 0, 2 * int(c&0x0f), nil
	case c >= 0x90 && c <= 0x9f: // fixarray
		return 1, 0, int(c & 0x0f), nil
	case c >= 0xa0 && c <= 0xbf: // fixstr
		return 1, int(c & 0x1f), 0, nil
	case c == 0xc4, c == 0xd9: // bin8, str8
		n, err = size(1)
		return 2, n, 0, err
	case c == 0xc5, c == 0xda:
		n, err = size(2)
		return 3, n, 0, err
	case c == 0xc6, c == 0xdb:
		n, err = size(4)
		return 5, n, 0, err
	case c == 0xc7: // ext8: length, type, data
		n, err = size(1)
		return 3, n, 0, err
	case c == 0xc8:
		n, err = size(2)
		return 4, n, 0, err
	case c == 0xc9:
		n, err = size(4)
		return 6, n, 0, err
	case c == 0xca:
		return 1, 4, 0, nil
	case c == 0xcb:
		return 1, 8, 0, nil
	case c >= 0xcc && c <= 0xcf: // uint8..64
		return 1, 1 << (c - 0xcc), 0, nil
	case c >= 0xd0 && c <= 0xd3: // int8..64
		return 1, 1 << (c - 0xd0), 0, nil
	case c >= 0xd4 && c <= 0xd8: // fixext 1..16: type, data
		return 2, 1 << (c - 0xd4), 0, nil
	case c == 0xdc:
		n, err = size(2)
		return 3, 0, n, err
	case c == 0xdd:
		n, err = size(4)
		return 5, 0, n, err
	case c == 0xde:
		n, err = size(2)
		return 3, 0, 2 * n, err
	case c == 0xdf:
		n, err = size(4)
		return 5, 0, 2 * min(n, 1<<30-1), err
	}
	return 0, 0, 0, fmt.Errorf("%w: byte 0x%02x is no msgpack type", ErrMalformed, c)
}
