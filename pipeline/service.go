package pipeline

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go/micro"
)

// ServiceVersion is the version stage services announce (semver, as micro wants).
const ServiceVersion = "0.1.0"

// hostname is this machine's name, in every service's metadata.
var hostname, _ = os.Hostname()

// ServiceName is the NATS micro service name of a stage: <pipeline>-<stage>.
// Every running instance of the same stage shares it, so `nats micro ls`
// counts them and `nats micro stats` sums them.
func ServiceName(pipeline, stage string) string { return pipeline + "-" + stage }

// addService registers a running stage as a NATS micro service: discovery
// ($SRV.PING/INFO/STATS), its subjects in the metadata, custom stats with
// the stage's counters, and a "metrics" endpoint that answers them on request.
func (r *Runner) addService(n *host) (micro.Service, error) {
	ins := n.inSubjects
	var outs []string
	for _, p := range n.ports {
		outs = append(outs, Subject(r.cfg.Name, n.cfg.Name, p.Name))
	}
	stats := func() StageStats { return r.metrics.stageStats(n.m) }
	svc, err := micro.AddService(r.pool.connFor(n.cfg.Name), micro.Config{
		Name:        ServiceName(r.cfg.Name, n.cfg.Name),
		Version:     ServiceVersion,
		Description: n.cfg.spec.Summary,
		Metadata: map[string]string{
			"pipeline": r.cfg.Name, "stage": n.cfg.Name, "kind": n.cfg.Kind, "device": n.m.device, "instance": r.instance, "host": hostname,
			"inputs": strings.Join(ins, ","), "outputs": strings.Join(outs, ","),
		},
		StatsHandler: func(*micro.Endpoint) any { return stats() },
	})
	if err != nil {
		return nil, fmt.Errorf("%w: registering stage %q as a NATS micro service failed: %w", ErrTransport, n.cfg.Name, err)
	}
	err = svc.AddEndpoint("metrics", micro.HandlerFunc(func(req micro.Request) {
		b, _ := json.Marshal(stats())
		_ = req.Respond(b)
	}), micro.WithEndpointSubject("avflow."+r.cfg.Name+"."+n.cfg.Name+".$metrics"))
	if err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("%w: stage %q metrics endpoint: %w", ErrTransport, n.cfg.Name, err)
	}
	return svc, nil
}
