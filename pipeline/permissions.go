package pipeline

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go/micro"
)

// ErrPermissions wraps the reasons no permissions can be given for a
// process (avflow permissions).
var ErrPermissions = errors.New("permissions")

// Process is one process of a deployment, as avflow runs it: Serve set is
// avflow serve --stage for those stages (every other stage is another
// process's); Serve empty is avflow run, with Remote (and the stages the
// file marks remote: true) left to other processes. Transport "" is the
// file's.
type Process struct {
	Serve, Remote []string
	Transport     string
	Delivery      string // live or job ("": the file's)
}

// NATSPermissions are the subjects a process publishes and subscribes to
// (nats-server subjects, wildcards allowed), and how many answers to one
// request it may publish (nats-server's allow_responses max; 0: none).
//
// Its micro services answer requests ($SRV pings, info, stats, the
// $metrics endpoint). A request to every service ($SRV.PING, as nats
// micro ls sends it) reaches each service of a connection, and all of a
// process's services may share one connection; nats-server counts each
// delivery of a request to a connection after the first as one answer
// too. So n services answer one request with 2n-1 "answers".
type NATSPermissions struct {
	Publish, Subscribe []string
	Responses          int
}

// inboxes is what a process subscribes to for the answers to its micro
// PINGs (nats.go's inboxes).
const inboxes = "_INBOX.>"

// Permissions returns the least a process of the validated pipeline cfg
// needs from the NATS server (derived from the wire protocol; see
// transport_nats.go and docs/services.md):
//   - for each output port it publishes on NATS: the subject and
//     <subject>.eos, and in block flow it subscribes to <subject>.ack;
//   - for each input it reads over NATS: subscribe to the subject (a queue
//     subscription) and <subject>.eos, and in block flow publish
//     <subject>.ack; when the producer is another process's, PINGs to the
//     producer's service ($SRV.PING.<pipeline>-<stage>, answers on _INBOX);
//   - for each stage's micro service: subscribe to $SRV.PING/INFO/STATS,
//     the same for the service's name and its id, and the stage's $metrics
//     endpoint; answering them (Responses);
//   - for avflow run with remote stages: PINGs to their services.
func Permissions(cfg *Config, p Process) (NATSPermissions, error) {
	if !cfg.validated {
		return NATSPermissions{}, fmt.Errorf("%w: %s: validate the pipeline first", ErrPermissions, cfg.File)
	}
	transport := cmp.Or(p.Transport, cfg.Transport, TransportAuto)
	switch {
	case !validTransport(transport):
		return NATSPermissions{}, fmt.Errorf("%w: transport %q: want auto or nats", ErrPermissions, transport)
	case transport == TransportLocal:
		return NATSPermissions{}, fmt.Errorf("%w: transport local uses no NATS server: there is nothing to permit", ErrPermissions)
	}
	remote, err := remoteStages(cfg, Options{Remote: p.Remote, Serve: p.Serve})
	if err != nil {
		return NATSPermissions{}, err
	}
	delivery := cmp.Or(p.Delivery, cfg.Delivery, DeliveryLive)
	switch {
	case !validDelivery(delivery):
		return NATSPermissions{}, fmt.Errorf("%w: delivery %q: want live or job", ErrPermissions, delivery)
	case delivery == DeliveryJob && transport != TransportAuto:
		return NATSPermissions{}, fmt.Errorf("%w: delivery job needs transport auto, not %s", ErrPermissions, transport)
	}
	ps := &permSet{r: &Runner{cfg: cfg, remote: remote, byName: map[string]*host{}}, nats: transport == TransportNATS,
		serving: len(p.Serve) > 0, pub: map[string]bool{}, sub: map[string]bool{}}
	if delivery == DeliveryJob {
		ps.job(len(p.Serve) == 0)
	}
	for _, s := range cfg.order {
		if !remote[s.Name] {
			ps.inputs(s)
			ps.outputs(s)
			ps.service(s)
			ps.buckets(s)
		}
	}
	if len(p.Serve) == 0 { // the run waits for its remote stages' services
		for _, name := range slices.Sorted(maps.Keys(remote)) {
			ps.ping(name)
		}
	}
	for _, name := range p.Serve { // serve checks the stage's other instances agree
		ps.ping(name)
	}
	if len(p.Serve) == 0 { // a second driver of the deployment is refused: its first stage is asked for
		if first := ps.r.firstLocalStage(); first != "" {
			ps.ping(first)
		}
	}
	return NATSPermissions{Publish: sortSubjects(ps.pub), Subscribe: sortSubjects(ps.sub), Responses: 2*ps.services - 1}, nil
}

// permSet collects the subjects of one process. r is a runner that is
// never run: its remote set and edge flow are the process's.
type permSet struct {
	r        *Runner
	nats     bool // transport nats: every edge is on NATS
	serving  bool // avflow serve: its stages may have replicas in other processes
	pub, sub map[string]bool
	services int
}

// inputs are the subscriptions of a stage's inputs that cross NATS, and
// the credits it sends back.
func (ps *permSet) inputs(s *StageConfig) {
	for i, in := range s.Inputs {
		port, _ := findPort(ps.r.cfg.Stage(in.Stage).outputs, in.Port)
		remote := ps.r.remote[in.Stage]
		if !ps.nats && !remote {
			continue // in-process edge
		}
		subject := Subject(ps.r.cfg.Name, in.Stage, port.Name)
		ps.sub[subject], ps.sub[subject+eosSuffix] = true, true
		// In every flow the consumer asks its producers on <subject>.ack
		// whether they have ended (ended?), and says it leaves.
		ps.pub[subject+ackSuffix] = true
		if ps.r.edgeFlow(port.Type) == FlowBlock {
			if ps.serving { // what its producers send this instance alone
				ps.sub[directSubject(subject, consumerRef{stage: s.Name, input: i}, "*")] = true
			}
		}
		if remote { // data and ends are taken only from its instances
			ps.ping(in.Stage)
			ps.ping(s.Name) // does its own queue group have other members (reorder)?
		}
	}
}

// outputs are the subjects of a stage's ports that are published on NATS:
// over transport auto the meta ports, the ports no stage of this process
// reads and those another process's stage reads.
func (ps *permSet) outputs(s *StageConfig) {
	for _, port := range s.outputs {
		local, remote := ps.readers(s.Name, port.Name)
		if !ps.nats && port.Type.Kind != envelope.KindData && (local > 0 || port.Unread == UnreadBranches) && remote == 0 {
			continue
		}
		subject := Subject(ps.r.cfg.Name, s.Name, port.Name)
		// A port the stage never produces (what its params turned off)
		// only ever sends its end of stream.
		if port.Unread != UnreadQuiet || local+remote > 0 {
			ps.pub[subject] = true
		}
		ps.pub[subject+eosSuffix] = true
		ps.sub[subject+ackSuffix] = true // credits, and in every flow the consumers' ended? (see inputs)
		if ps.r.edgeFlow(port.Type) == FlowBlock {
			for _, in := range ps.routed(s.Name, port.Name) {
				ps.ping(in.stage) // credits are taken only from the reader's instances, which are asked for
				ps.pub[directSubject(subject, in, "*")] = true
			}
		}
	}
}

// routed are the readers of a stage's port that may have replicas: each
// message goes to one of their instances alone (see natsPublisher.route).
// Those are the readers in other processes, and over transport nats in
// avflow serve the served stages too.
func (ps *permSet) routed(stage, port string) []consumerRef {
	out := ps.r.remoteReaders(stage, port)
	if ps.serving && ps.nats {
		out = append(out, ps.r.readers(stage, port, false)...)
	}
	return out
}

// readers counts the stages of this process (local) and of others
// (remote) that read a stage's port.
func (ps *permSet) readers(stage, port string) (local, remote int) {
	for _, s := range ps.r.cfg.Stages {
		for _, in := range s.Inputs {
			src := ps.r.cfg.Stage(in.Stage)
			if p, ok := findPort(src.outputs, in.Port); in.Stage != stage || !ok || p.Name != port {
				continue
			}
			if ps.r.remote[s.Name] {
				remote++
			} else {
				local++
			}
		}
	}
	return local, remote
}

// service is what a stage's micro service subscribes to (see addService).
func (ps *permSet) service(s *StageConfig) {
	name := ServiceName(ps.r.cfg.Name, s.Name)
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		for _, of := range [][2]string{{"", ""}, {name, ""}, {name, "*"}} { // every service, this one, this instance
			subject, _ := micro.ControlSubject(verb, of[0], of[1])
			ps.sub[subject] = true
		}
	}
	ps.sub[Subject(ps.r.cfg.Name, s.Name, "$metrics")] = true
	ps.services++
}

// job is what job delivery needs of JetStream's API: the driver makes
// and removes the run's stream and its consumers; every process that
// reads an edge from another one takes from that edge's consumer and
// acknowledges there; one that writes an edge read by another process
// publishes on the edge's job subject (the stream's acks reach the
// inbox).
func (ps *permSet) job(driver bool) {
	stream := jobStreamName(ps.r.cfg.Name)
	api := "$JS.API."
	for _, e := range ps.r.jobEdges() {
		if ps.r.remote[e.ref.stage] { // this process writes it
			ps.pub[jobSubject(e.subject, e.ref)] = true
			continue
		}
		durable := jobDurable(e.ref)
		ps.pub[api+"CONSUMER.INFO."+stream+"."+durable] = true
		ps.pub[api+"CONSUMER.MSG.NEXT."+stream+"."+durable] = true
		ps.pub["$JS.ACK."+stream+"."+durable+".>"] = true // acks, naks, and in-progress acks: more than allow_responses lets through
		ps.pub[api+"STREAM.NAMES"] = true                 // finding the stream by its subject
	}
	if driver {
		ps.pub[api+"INFO"] = true // is there JetStream?
		ps.pub[api+"STREAM.NAMES"] = true
		for _, verb := range []string{"CREATE", "DELETE"} {
			ps.pub[api+"STREAM."+verb+"."+stream] = true
		}
		ps.pub[api+"CONSUMER.CREATE."+stream+".>"] = true
	}
	ps.sub[inboxes] = true
}

// buckets is what a stage's key-value buckets need of JetStream (see
// KVPermissions): all of it, as the stage makes the bucket, watches it
// and writes it.
func (ps *permSet) buckets(s *StageConfig) {
	spec, err := Default.Lookup(s.Kind)
	if err != nil || spec.Buckets == nil {
		return
	}
	for _, b := range spec.Buckets(s.Params, ps.r.cfg.Name) {
		kv := KVPermissions(b, true, ">")
		for _, sub := range kv.Publish {
			ps.pub[sub] = true
		}
		for _, sub := range kv.Subscribe {
			ps.sub[sub] = true
		}
	}
}

// KVPermissions are what a client of the key-value bucket needs: finding
// it, reading it (direct gets, and the ordered consumers of watches and
// key listings, with their flow control), and writing the keys matching
// write (a NATS subject wildcard, e.g. "profile.>"; "" for none). With
// create, making the bucket too.
func KVPermissions(bucket string, create bool, write string) NATSPermissions {
	stream, api := "KV_"+bucket, "$JS.API."
	pub := []string{api + "STREAM.INFO." + stream, api + "CONSUMER.CREATE." + stream + ".>", api + "CONSUMER.DELETE." + stream + ".>",
		api + "DIRECT.GET." + stream + ".>", api + "STREAM.MSG.GET." + stream, "$JS.FC." + stream + ".>"}
	if create { // making it asks the account's limits first
		pub = append(pub, api+"INFO", api+"STREAM.CREATE."+stream, api+"STREAM.UPDATE."+stream)
	}
	if write != "" {
		pub = append(pub, "$KV."+bucket+"."+write)
	}
	slices.Sort(pub)
	return NATSPermissions{Publish: pub, Subscribe: []string{inboxes}}
}

// ping is a micro PING to a stage's service and the inbox its answers reach.
func (ps *permSet) ping(stage string) {
	subject, _ := micro.ControlSubject(micro.PingVerb, ServiceName(ps.r.cfg.Name, stage), "")
	ps.pub[subject] = true
	ps.sub[inboxes] = true
}

// sortSubjects lists the pipeline's own subjects first, then the micro
// ones, then the inboxes, each group sorted.
func sortSubjects(set map[string]bool) []string {
	group := func(s string) int {
		switch {
		case strings.HasPrefix(s, "avflow."):
			return 0
		case strings.HasPrefix(s, micro.APIPrefix+"."):
			return 1
		case strings.HasPrefix(s, "$JS."):
			return 2
		}
		return 3
	}
	return slices.SortedFunc(maps.Keys(set), func(a, b string) int {
		return cmp.Or(cmp.Compare(group(a), group(b)), strings.Compare(a, b))
	})
}

// Union is what two processes that share one NATS user need (each has
// connections of its own: the most answers either gives).
func (p NATSPermissions) Union(q NATSPermissions) NATSPermissions {
	union := func(a, b []string) []string {
		set := map[string]bool{}
		for _, s := range append(slices.Clone(a), b...) {
			set[s] = true
		}
		return sortSubjects(set)
	}
	return NATSPermissions{Publish: union(p.Publish, q.Publish), Subscribe: union(p.Subscribe, q.Subscribe), Responses: max(p.Responses, q.Responses)}
}

// Config renders the permissions as a nats-server config block, for a
// user of an authorization block:
//
//	authorization { users = [ {user: u, password: p, permissions: {...}} ] }
//
// An empty list denies everything (nats-server reads a missing allow list
// as "anything").
func (p NATSPermissions) Config() string {
	var b strings.Builder
	list := func(name string, subjects []string) {
		fmt.Fprintf(&b, "  %s: {\n", name)
		if len(subjects) == 0 {
			b.WriteString("    deny: [\">\"]\n  }\n")
			return
		}
		b.WriteString("    allow: [\n")
		for _, s := range subjects {
			fmt.Fprintf(&b, "      %q\n", s)
		}
		b.WriteString("    ]\n  }\n")
	}
	b.WriteString("permissions: {\n")
	list("publish", p.Publish)
	list("subscribe", p.Subscribe)
	if p.Responses > 0 {
		fmt.Fprintf(&b, "  allow_responses: {max: %d}\n", p.Responses)
	}
	b.WriteString("}\n")
	return b.String()
}
