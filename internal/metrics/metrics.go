// Package metrics defines weft's Prometheus metrics, all named flannel_*
// and registered on a private registry (never the global default one, so
// tests and embedders get a clean set). Upstream flanneld exports none.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/weft-net/weft/internal/dataplane"
)

// Metrics holds every collector. Its methods are safe on a nil receiver,
// so code paths without metrics need no checks.
type Metrics struct {
	Registry *prometheus.Registry

	peers             *prometheus.GaugeVec
	leaseExpiry       prometheus.Gauge
	renewals          *prometheus.CounterVec
	watchRestarts     *prometheus.CounterVec
	passes            *prometheus.CounterVec
	passDuration      *prometheus.HistogramVec
	objects           *prometheus.CounterVec
	repaired          *prometheus.CounterVec
	skipped           *prometheus.CounterVec
	skippedNow        *prometheus.GaugeVec
	masqRepairs       prometheus.Counter
	masqSyncs         *prometheus.CounterVec
	buildInfo         *prometheus.GaugeVec
	subnetFileWritten prometheus.Gauge
	subnetFileErrors  prometheus.Counter
	reclaims          *prometheus.CounterVec
	leaseConflict     prometheus.Gauge
	commands          *prometheus.CounterVec
	commandSeconds    *prometheus.HistogramVec
	peersReachable    prometheus.Gauge
	peersUnreachable  prometheus.Gauge
	probeRTT          prometheus.Histogram
	reachChanges      prometheus.Counter
}

// New creates and registers the metrics; version labels flannel_build_info.
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flannel_peers", Help: "Peer leases currently programmed, by backend type.",
		}, []string{"backend"}),
		leaseExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flannel_lease_expiry_timestamp_seconds", Help: "When this host's subnet lease expires (Unix time; 0 for a reservation).",
		}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_lease_renewals_total", Help: "Lease renewal attempts, by result (ok, failed).",
		}, []string{"result"}),
		watchRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_store_watch_restarts_total", Help: "Times the lease watch had to be re-established, by reason.",
		}, []string{"reason"}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_reconcile_passes_total", Help: "Reconcile passes, by kind (full, incremental) and result (ok, error).",
		}, []string{"kind", "result"}),
		passDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flannel_reconcile_duration_seconds",
			Help:    "Duration of reconcile passes (plan, diff and kernel writes), by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100µs … 26s
		}, []string{"kind"}),
		objects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_kernel_objects_changed_total", Help: "Kernel objects written, by kind (link, route, neigh, fdb, wgpeer, udppeer: an entry of a udp forwarding table) and operation (added, removed, updated).",
		}, []string{"kind", "op"}),
		repaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_kernel_objects_repaired_total", Help: "Kernel objects restored or removed to undo drift (changed behind the daemon's back), by kind.",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_peer_leases_skipped_total", Help: "Peer leases skipped as malformed or unusable, by reason (counted when a lease becomes skipped, or is skipped for another reason).",
		}, []string{"reason"}),
		skippedNow: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flannel_peer_leases_skipped", Help: "Peer leases in the store currently skipped as malformed or unusable, by reason.",
		}, []string{"reason"}),
		masqRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flannel_masquerade_repairs_total", Help: "Masquerade/forward rules restored by a resync.",
		}),
		masqSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_masquerade_syncs_total", Help: "Masquerade/forward rule syncs, by result (ok, error).",
		}, []string{"result"}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flannel_build_info", Help: "Always 1; labelled with the daemon's implementation and version.",
		}, []string{"implementation", "version"}),
		subnetFileWritten: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flannel_subnet_file_written_timestamp_seconds", Help: "When subnet.env was last written (Unix time).",
		}),
		subnetFileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flannel_subnet_file_write_errors_total", Help: "Failed attempts to write subnet.env (each is retried; the node is not ready meanwhile).",
		}),
		reclaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_lease_reclaims_total",
			Help: "Attempts to take this host's lapsed lease back with the same subnets, by result (ok, taken: another host holds the subnet, failed).",
		}, []string{"result"}),
		leaseConflict: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flannel_lease_conflict",
			Help: "1 while another host holds this host's subnet (leased after ours lapsed); the node is not ready until recovered.",
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flannel_extension_commands_total",
			Help: "Commands the extension backend ran, by config field (PreStartupCommand, SubnetAddCommand, …) and result (ok, error).",
		}, []string{"command", "result"}),
		commandSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flannel_extension_command_duration_seconds",
			Help:    "How long the extension backend's commands took, by config field.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1ms … 65s
		}, []string{"command"}),
		peersReachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flannel_peers_reachable", Help: "Peers whose last probe through the overlay was answered (--probe-interval).",
		}),
		peersUnreachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flannel_peers_unreachable", Help: "Peers whose last probe through the overlay went unanswered (twice); weft status names them.",
		}),
		probeRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flannel_peer_probe_rtt_seconds",
			Help:    "Round-trip time of answered peer probes (ICMP echo through the overlay).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8), // 100µs … 1.6s
		}),
		reachChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flannel_peer_reachability_changes_total", Help: "Peers going from reachable to unreachable or back.",
		}),
	}
	m.Registry.MustRegister(
		m.peers, m.leaseExpiry, m.renewals, m.watchRestarts, m.passes, m.passDuration,
		m.objects, m.repaired, m.skipped, m.skippedNow, m.masqRepairs, m.masqSyncs, m.buildInfo, m.subnetFileWritten,
		m.subnetFileErrors, m.reclaims, m.leaseConflict, m.commands, m.commandSeconds,
		m.peersReachable, m.peersUnreachable, m.probeRTT, m.reachChanges,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.buildInfo.WithLabelValues("weft", version).Set(1)
	// Pre-create label values so dashboards see zeros, not gaps.
	for _, r := range []string{"ok", "failed"} {
		m.renewals.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "taken", "failed"} {
		m.reclaims.WithLabelValues(r)
	}
	for _, k := range []string{"full", "incremental"} {
		for _, r := range []string{"ok", "error"} {
			m.passes.WithLabelValues(k, r)
		}
	}
	return m
}

// SetPeers records the number of programmed peers.
func (m *Metrics) SetPeers(backend string, n int) {
	if m != nil {
		m.peers.WithLabelValues(backend).Set(float64(n))
	}
}

// SetLeaseExpiry records our lease's expiry (zero: never).
func (m *Metrics) SetLeaseExpiry(t time.Time) {
	if m == nil {
		return
	}
	if t.IsZero() {
		m.leaseExpiry.Set(0)
		return
	}
	m.leaseExpiry.Set(float64(t.UnixNano()) / 1e9)
}

// Renewal counts a renewal attempt.
func (m *Metrics) Renewal(ok bool) {
	if m != nil {
		m.renewals.WithLabelValues(result(ok, "ok", "failed")).Inc()
	}
}

// Reclaim counts an attempt to reclaim our lapsed lease: "ok", "taken"
// or "failed".
func (m *Metrics) Reclaim(result string) {
	if m != nil {
		m.reclaims.WithLabelValues(result).Inc()
	}
}

// SetLeaseConflict records whether another host holds our subnet.
func (m *Metrics) SetLeaseConflict(v bool) {
	if m == nil {
		return
	}
	if v {
		m.leaseConflict.Set(1)
	} else {
		m.leaseConflict.Set(0)
	}
}

// WatchStore exports since when the lease store has been unreachable (0
// while it answers), read from since at each scrape.
func (m *Metrics) WatchStore(since func() time.Time) {
	if m == nil || since == nil {
		return
	}
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flannel_store_unreachable_since_timestamp_seconds",
		Help: "Since when the lease store (etcd, the Kubernetes API) has been unreachable (Unix time); 0 while it answers.",
	}, func() float64 {
		t := since()
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}))
}

// WatchRestart counts a watch restart.
func (m *Metrics) WatchRestart(reason string) {
	if m != nil {
		m.watchRestarts.WithLabelValues(reason).Inc()
	}
}

// Skipped counts a skipped peer lease.
func (m *Metrics) Skipped(reason string) {
	if m != nil {
		m.skipped.WithLabelValues(reason).Inc()
	}
}

// SetSkipped records how many peer leases are currently skipped for reason.
func (m *Metrics) SetSkipped(reason string, n int) {
	if m != nil {
		m.skippedNow.WithLabelValues(reason).Set(float64(n))
	}
}

// Pass records a reconcile pass; repair says its writes undid drift
// rather than followed lease changes.
func (m *Metrics) Pass(full bool, took time.Duration, ch dataplane.Changes, err error, repair bool) {
	if m == nil {
		return
	}
	kind := result(full, "full", "incremental")
	m.passes.WithLabelValues(kind, result(err == nil, "ok", "error")).Inc()
	m.passDuration.WithLabelValues(kind).Observe(took.Seconds())
	add := func(k, op string, n int) {
		if n > 0 {
			m.objects.WithLabelValues(k, op).Add(float64(n))
			if repair {
				m.repaired.WithLabelValues(k).Add(float64(n))
			}
		}
	}
	add("link", "added", ch.LinksAdded)
	add("link", "removed", ch.LinksRemoved)
	add("link", "updated", ch.LinksUpdated)
	add("route", "added", ch.RoutesAdded)
	add("route", "removed", ch.RoutesRemoved)
	add("neigh", "added", ch.NeighsAdded)
	add("neigh", "removed", ch.NeighsRemoved)
	add("fdb", "added", ch.FDBAdded)
	add("fdb", "removed", ch.FDBRemoved)
	add("wgpeer", "added", ch.WGPeersAdded)
	add("wgpeer", "removed", ch.WGPeersRemoved)
	add("udppeer", "added", ch.UDPPeersAdded)
	add("udppeer", "removed", ch.UDPPeersRemoved)
}

// MasqSync records a masquerade rule sync and the rules it repaired.
func (m *Metrics) MasqSync(repaired int, err error) {
	if m == nil {
		return
	}
	m.masqSyncs.WithLabelValues(result(err == nil, "ok", "error")).Inc()
	m.masqRepairs.Add(float64(repaired))
}

// SubnetFileWritten records a write of subnet.env.
func (m *Metrics) SubnetFileWritten(t time.Time) {
	if m != nil {
		m.subnetFileWritten.Set(float64(t.UnixNano()) / 1e9)
	}
}

// SubnetFileWriteFailed counts a failed write of subnet.env.
func (m *Metrics) SubnetFileWriteFailed() {
	if m != nil {
		m.subnetFileErrors.Inc()
	}
}

func result(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}

// CommandRan counts a command of the extension backend.
func (m *Metrics) CommandRan(command string, took time.Duration, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.commands.WithLabelValues(command, result).Inc()
	m.commandSeconds.WithLabelValues(command).Observe(took.Seconds())
}

// ProbeRTT records an answered peer probe (probe.Observer).
func (m *Metrics) ProbeRTT(rtt time.Duration) {
	if m != nil {
		m.probeRTT.Observe(rtt.Seconds())
	}
}

// ReachabilityChanged counts a peer going unreachable or back
// (probe.Observer).
func (m *Metrics) ReachabilityChanged() {
	if m != nil {
		m.reachChanges.Inc()
	}
}

// SetReachable records how many peers are reachable and unreachable
// (probe.Observer).
func (m *Metrics) SetReachable(reachable, unreachable int) {
	if m != nil {
		m.peersReachable.Set(float64(reachable))
		m.peersUnreachable.Set(float64(unreachable))
	}
}
