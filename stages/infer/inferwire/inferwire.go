// Package inferwire is the request and reply of avflow's shared inference
// service (avflow serve --infer MODEL), so that a service or a caller
// written in another language can stand in for avflow's.
//
// The service is a NATS micro service named [ServiceName] (avflow-infer-
// <model>) whose endpoint "detect" listens on [Subject] (avflow.infer.
// <model>) in the queue group "q": every instance of the service shares
// the requests. A request is one image the caller has already scaled and
// colour-converted to the model's input size (a 320x240 tensor crosses the
// wire, not a 3 MB frame), as a msgpack map ([Request]); the service
// normalises it as the model card says, runs the model on the images of
// several callers at once and answers with a msgpack map ([Reply]) of the
// boxes found, in the image's coordinates (0 to 1). A request it cannot
// serve gets the NATS micro error headers (Nats-Service-Error and
// Nats-Service-Error-Code, see [CodeBadRequest] and the others) and an
// empty body. docs/infer-service.md has examples.
//
// This package knows nothing of FFmpeg or ONNX Runtime.
package inferwire

import (
	"errors"
	"fmt"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/vmihailenco/msgpack/v5"
)

// Version is the version this build writes and the highest it reads.
const Version = 1

// Bounds of a request, whoever sends it.
const (
	MaxSide   = 4096     // the largest image width or height
	MaxPixels = 16 << 20 // the largest image, in bytes
	MaxBoxes  = 1 << 16  // the most boxes in a reply (and entries of any array or map)
)

// Error codes of a reply's Nats-Service-Error-Code header.
const (
	CodeBadRequest = "400" // a request that does not parse, or an image of the wrong size or channels
	CodeNoModel    = "404" // a model the service does not serve
	CodeFailed     = "500" // the model failed on the image
	CodeStopping   = "503" // the service is stopping
)

// ErrMalformed is a request or reply that does not parse or breaks the
// bounds above.
var ErrMalformed = errors.New("inferwire: malformed message")

// Request is one image for the model.
type Request struct {
	V      int    `msgpack:"v"`
	Model  string `msgpack:"model"`  // the card name the caller expects the service to run
	Caller string `msgpack:"caller"` // who asks: <pipeline>/<stage>/<instance>, for errors and logs
	// W, H, C: the image's width, height and channels (3: the card's
	// colour order, RGB or BGR; 1: GRAY), the size of the model's input
	// (for a model with a fixed input size, exactly that size).
	W int `msgpack:"w"`
	H int `msgpack:"h"`
	C int `msgpack:"c"`
	// Threshold is the minimum score of a box the caller wants; 0: the card's.
	Threshold float32 `msgpack:"thr"`
	// Pixels are H*W*C bytes: rows top to bottom, each row's pixels left
	// to right with their channels interleaved, not yet normalised.
	Pixels []byte `msgpack:"px"`
}

// Reply is what the model found.
type Reply struct {
	V     int                  `msgpack:"v"`
	Boxes []envelope.Detection `msgpack:"boxes"` // x1, y1, x2, y2 as fractions of the image's width and height
}

// ServiceName is the micro service of a model.
func ServiceName(model string) string { return "avflow-infer-" + model }

// Subject is the subject of a model's detect endpoint.
func Subject(model string) string { return "avflow.infer." + model }

// Marshal writes a request.
func (r *Request) Marshal() ([]byte, error) {
	r.V = Version
	return msgpack.Marshal(r)
}

// UnmarshalRequest reads a request and checks it against the bounds.
func UnmarshalRequest(b []byte) (Request, error) {
	var r Request
	if err := envelope.CheckLengths(b, MaxBoxes); err != nil { // before msgpack allocates what b claims
		return Request{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := msgpack.Unmarshal(b, &r); err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	switch {
	case r.V < 1 || r.V > Version:
		return r, fmt.Errorf("%w: version %d (this build reads 1 to %d)", ErrMalformed, r.V, Version)
	case r.W <= 0 || r.H <= 0 || r.W > MaxSide || r.H > MaxSide:
		return r, fmt.Errorf("%w: image %dx%d (each side 1 to %d)", ErrMalformed, r.W, r.H, MaxSide)
	case r.C != 1 && r.C != 3:
		return r, fmt.Errorf("%w: %d channels (1 or 3)", ErrMalformed, r.C)
	case r.W*r.H*r.C > MaxPixels:
		return r, fmt.Errorf("%w: image of %d bytes (at most %d)", ErrMalformed, r.W*r.H*r.C, MaxPixels)
	case len(r.Pixels) != r.W*r.H*r.C:
		return r, fmt.Errorf("%w: %d bytes of pixels for a %dx%dx%d image (want %d)", ErrMalformed, len(r.Pixels), r.W, r.H, r.C, r.W*r.H*r.C)
	case r.Threshold < 0 || r.Threshold > 1 || r.Threshold != r.Threshold:
		return r, fmt.Errorf("%w: threshold %v (0 to 1)", ErrMalformed, r.Threshold)
	}
	return r, nil
}

// Marshal writes a reply.
func (r *Reply) Marshal() ([]byte, error) {
	r.V = Version
	return msgpack.Marshal(r)
}

// UnmarshalReply reads a reply.
func UnmarshalReply(b []byte) (Reply, error) {
	var r Reply
	if err := envelope.CheckLengths(b, MaxBoxes); err != nil { // before msgpack allocates what b claims
		return Reply{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := msgpack.Unmarshal(b, &r); err != nil {
		return Reply{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if r.V < 1 || r.V > Version {
		return r, fmt.Errorf("%w: version %d (this build reads 1 to %d)", ErrMalformed, r.V, Version)
	}
	return r, nil
}
