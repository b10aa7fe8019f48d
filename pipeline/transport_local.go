package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
)

type localPublisher struct {
	port      string // stage.port, for the log
	consumers []consumerRef
	log       *slog.Logger
	gone      map[string]bool // consumers found ended, warned about once
}

func (p *localPublisher) Publish(ctx context.Context, e *envelope.Envelope) error {
	for i, c := range p.consumers {
		m := e
		if i < len(p.consumers)-1 {
			cp := *e
			if e.Local != nil {
				l, err := e.Local.Clone()
				if err != nil {
					return err
				}
				cp.Local = l
			}
			cp.Stamps = append([]envelope.Stamp(nil), e.Stamps...)
			m = &cp
		}
		m.Input = c.input
		stalled := func(waited time.Duration) {
			p.log.Warn("slow consumer: waiting for room in its input queue", "port", p.port, "waiting_for", c.stage, "waited", waited.Round(time.Second))
		}
		err := c.q.Push(ctx, m, stalled)
		if errors.Is(err, errConsumerEnded) {
			if ctx.Err() == nil && !p.gone[c.id()] && e.Kind != envelope.KindEOS {
				p.log.Warn("a consumer has ended: what this port sends it from now on is dropped", "port", p.port, "consumer", c.stage)
			}
			p.gone[c.id()] = true
			continue
		}
		if err != nil {
			if i < len(p.consumers)-1 {
				e.Release()
			}
			return err
		}
	}
	if len(p.consumers) == 0 {
		e.Release()
	}
	return nil
}

func (p *localPublisher) Close() {}
