package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WireGuardDevice is what the WireGuard metrics read of one of our devices
// when they are scraped.
type WireGuardDevice struct {
	Name string
	// Impl is "kernel" or "userspace".
	Impl string
	// Handshakes holds each peer's time since its latest handshake; a
	// negative value means it never completed one.
	Handshakes []time.Duration
	// RxBytes and TxBytes are summed over the peers.
	RxBytes, TxBytes int64
}

// handshakeBuckets: WireGuard renews a session every 2 minutes while
// traffic flows and gives up on one after 3; a handshake older than
// that means an idle peer (or, with keepalives on, a broken one).
func handshakeBuckets() []float64 { return []float64{5, 15, 30, 60, 120, 180, 300, 600, 1800, 3600} }

// wgCollector reads the devices at scrape time: no per-peer series (a
// label per peer would make thousands of series), but the distribution
// of handshake ages, which shows both "all fresh" and "some stuck".
type wgCollector struct {
	read                             func() []WireGuardDevice
	info, peers, never, ages, rx, tx *prometheus.Desc
}

// WatchWireGuard exports the wireguard backend's devices, read by read at
// each scrape.
func (m *Metrics) WatchWireGuard(read func() []WireGuardDevice) {
	if m == nil {
		return
	}
	l := []string{"device"}
	m.Registry.MustRegister(&wgCollector{
		read: read,
		info: prometheus.NewDesc("flannel_wireguard_device_info",
			"Always 1 per WireGuard device of ours; implementation is kernel or userspace (wireguard-go inside flanneld).", []string{"device", "implementation"}, nil),
		peers: prometheus.NewDesc("flannel_wireguard_peers", "WireGuard peers configured on the device.", l, nil),
		never: prometheus.NewDesc("flannel_wireguard_peers_without_handshake", "Peers that have not completed a handshake.", l, nil),
		ages: prometheus.NewDesc("flannel_wireguard_handshake_age_seconds",
			"Time since each peer's latest handshake, as a distribution over the peers that completed one.", l, nil),
		rx: prometheus.NewDesc("flannel_wireguard_received_bytes", "Bytes received from the device's current peers.", l, nil),
		tx: prometheus.NewDesc("flannel_wireguard_sent_bytes", "Bytes sent to the device's current peers.", l, nil),
	})
}

func (c *wgCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.peers, c.never, c.ages, c.rx, c.tx} {
		ch <- d
	}
}

func (c *wgCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, d.Name, d.Impl)
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(d.Handshakes)), d.Name)
		never, count, sum := 0, uint64(0), 0.0
		bounds := handshakeBuckets()
		buckets := make(map[float64]uint64, len(bounds))
		for _, b := range bounds {
			buckets[b] = 0
		}
		for _, h := range d.Handshakes {
			if h < 0 {
				never++
				continue
			}
			s := h.Seconds()
			count++
			sum += s
			for _, b := range bounds {
				if s <= b {
					buckets[b]++
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(c.never, prometheus.GaugeValue, float64(never), d.Name)
		ch <- prometheus.MustNewConstHistogram(c.ages, count, sum, buckets, d.Name)
		ch <- prometheus.MustNewConstMetric(c.rx, prometheus.GaugeValue, float64(d.RxBytes), d.Name)
		ch <- prometheus.MustNewConstMetric(c.tx, prometheus.GaugeValue, float64(d.TxBytes), d.Name)
	}
}
