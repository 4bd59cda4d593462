package daemon

import (
	"context"
	"sync/atomic"

	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/probe"
)

// Peer reachability (--probe-interval): a probe.Prober on a goroutine of
// its own sends an ICMP echo to every peer's ProbeAddr once per interval,
// spread evenly over it. It never asks the control loop for anything:
// after every pass the loop stores an O(1) snapshot of the peers
// (probePeers), which the prober reads at the start of each round. Its
// results reach the status Board (the "health" part of the status) and
// the metrics; /readyz does not depend on them, since other hosts'
// trouble is no reason to take this one out of service.

// prober is the daemon's side of probing: the snapshot it probes from
// and the Prober, or why there is none. A target's key is the peer's
// record (8 bytes where its lease ID takes 64: the prober holds one per
// peer for a whole round), which names an unreachable peer in the status.
type prober struct {
	peers atomic.Pointer[cow.Snapshot[*peer]]
	p     *probe.Prober[*peer]
	off   string
}

// startProber opens the ICMP sockets and starts probing under goFn. It
// returns a function closing the sockets once the group is done. Failing
// to open them is not fatal: the daemon runs unprobed and says why.
func (d *daemon) startProber(ctx context.Context, goFn func(func() error)) (closeFn func()) {
	pr := &prober{}
	d.probe = pr
	defer func() { d.cfg.Status.setProber(pr) }()
	interval := d.opts.ProbeInterval
	switch {
	case interval <= 0:
		pr.off = "off (--probe-interval 0)"
		return func() {}
	case !d.backend.ProbeAddr(d.self).IsValid():
		pr.off = "not probed with the " + d.backend.Type() + " backend"
		return func() {}
	}
	pinger, err := probe.Open()
	if err != nil {
		pr.off = "cannot probe: " + err.Error()
		d.log.Warn("peer reachability not probed", "err", err)
		return func() {}
	}
	b := d.backend
	pr.p = probe.New(probe.Config[*peer]{
		Pinger: pinger, Interval: interval, Observer: d.cfg.Metrics, Log: d.log,
		Targets: func() []probe.Target[*peer] {
			snap := pr.peers.Load()
			if snap == nil {
				return nil
			}
			out := make([]probe.Target[*peer], 0, snap.Len())
			for _, p := range snap.All() {
				if a := b.ProbeAddr(p.lease()); a.IsValid() {
					out = append(out, probe.Target[*peer]{Key: p, Addr: a})
				}
			}
			return out
		},
	})
	goFn(func() error { return pr.p.Run(ctx) })
	d.log.Info("probing peers", "interval", interval, "privileged", pinger.Privileged())
	return func() { pinger.Close() }
}

// feedProber hands the prober the peers after a pass (O(1)).
func (d *daemon) feedProber() {
	if d.probe == nil || d.probe.p == nil {
		return
	}
	s := d.peers.Snapshot()
	d.probe.peers.Store(&s)
}

// probeVersion is what a status rendering depends on of the prober.
func (pr *prober) version() uint64 {
	if pr == nil || pr.p == nil {
		return 0
	}
	return pr.p.Version()
}

// health renders the prober's report, naming unreachable peers by their records.
func (pr *prober) health() *httpapi.HealthStatus {
	if pr == nil {
		return nil
	}
	if pr.p == nil {
		return &httpapi.HealthStatus{Off: pr.off}
	}
	r := pr.p.Report()
	h := &httpapi.HealthStatus{Interval: r.Interval.String(), Peers: r.Targets, Reachable: r.Reachable, Unreachable: r.Unreachable}
	for _, d := range r.Down {
		p := d.Key
		h.UnreachablePeers = append(h.UnreachablePeers, httpapi.UnreachablePeer{
			Subnet: str(p.id.V4), IPv6Subnet: str(p.id.V6), PublicIP: str(p.attrs.PublicIP), PublicIPv6: str(p.attrs.PublicIPv6),
			Probed: d.Addr.String(), Since: d.Since, LastError: d.LastError,
		})
	}
	return h
}
