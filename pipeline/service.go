package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
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
			"pipeline": r.cfg.Name, "stage": n.cfg.Name, "kind": n.cfg.Kind, "device": n.m.device, "instance": r.instance,
			"inputs": strings.Join(ins, ","), "outputs": strings.Join(outs, ","), "host": hostname, "config": configHash(n.cfg),
			"delivery": r.opts.Delivery,
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

// configHash identifies what a stage does: its kind, inputs and params as
// validated. Instances of one stage in several processes must agree on it
// (the same file, or at least the same stage), or their outputs differ.
func configHash(s *StageConfig) string {
	var ins []string
	for _, in := range s.Inputs {
		ins = append(ins, in.String())
	}
	b, _ := json.Marshal(struct {
		Kind   string
		Inputs []string
		Params Params
	}{s.Kind, ins, s.Params})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// checkPeers refuses to run a stage whose other instances (served by
// other processes under the same deployment name) have another config
// (the same name served from two different files), or that has other
// instances though it keeps state across messages (an encoder).
func (r *Runner) checkPeers(name string, peers []micro.Ping) error {
	sc := r.stageConfig(name)
	want := configHash(sc)
	others := 0
	for _, p := range peers {
		if p.Metadata["instance"] == "" || p.Metadata["instance"] == r.instance {
			continue
		}
		if got := p.Metadata["delivery"]; got != "" && got != r.opts.Delivery {
			return fmt.Errorf("%w: stage %q: the instance %s on host %s runs with delivery %s, here %s: give avflow serve and avflow run the same --delivery (or delivery: in the file)",
				ErrRemote, name, p.Metadata["instance"], p.Metadata["host"], got, r.opts.Delivery)
		}
		if others++; len(r.opts.Serve) > 0 || others > 1 {
			// A stage that keeps state across messages cannot share its input.
			if err := sc.spec.ReplicasError(sc.Params); err != nil {
				return fmt.Errorf("%w: stage %q is served already (instance %s on host %s), and it cannot share its input: %w",
					ErrRemote, name, p.Metadata["instance"], p.Metadata["host"], err)
			}
		}
		if got := p.Metadata["config"]; got != want {
			return fmt.Errorf("%w: stage %q: the instance %s on host %s serves another config of it (%s, here %s): serve and run the same pipeline file, or give one a --name of its own",
				ErrRemote, name, p.Metadata["instance"], p.Metadata["host"], got, want)
		}
	}
	return nil
}
