package infer

import (
	"context"
	"fmt"

	"github.com/avflow/avflow/pipeline"
)

// newVAD is replaced by the audio implementation.
func newVAD(in pipeline.Init, m *loaded) (pipeline.Stage, error) {
	m.sess.Close()
	return nil, fmt.Errorf("%w: audio models are not wired yet", ErrInfer)
}

var _ = context.Background
