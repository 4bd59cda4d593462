package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/internal/dataplane"
)

// udpCollector reads the udp devices' counters at scrape time.
type udpCollector struct {
	read                      func() []dataplane.UDPStatus
	peers, packets, bytes, dr *prometheus.Desc
}

// WatchUDP exports the udp backend's forwarders, read by read at scrape
// time (nothing when the backend is another).
func (m *Metrics) WatchUDP(read func() []dataplane.UDPStatus) {
	if m == nil {
		return
	}
	l := []string{"device"}
	m.Registry.MustRegister(&udpCollector{
		read:    read,
		peers:   prometheus.NewDesc("flannel_udp_peers", "Entries in the udp device's forwarding table.", l, nil),
		packets: prometheus.NewDesc("flannel_udp_packets_total", "Packets the udp forwarder sent to peers (tx) and wrote into the device from peers (rx).", []string{"device", "direction"}, nil),
		bytes:   prometheus.NewDesc("flannel_udp_bytes_total", "Bytes of the packets counted by flannel_udp_packets_total.", []string{"device", "direction"}, nil),
		dr: prometheus.NewDesc("flannel_udp_dropped_packets_total",
			"Packets the udp forwarder dropped: no_peer (no peer's subnet holds the destination) or other (TTL ran out, not IPv4 — the kernel's own IPv6 packets on flannel0 among them —, malformed, or a failed write).", []string{"device", "reason"}, nil),
	})
}

func (c *udpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peers, c.packets, c.bytes, c.dr} {
		ch <- d
	}
}

func (c *udpCollector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.read() {
		s := d.Stats
		ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(d.Peers)), d.Name)
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.TxPackets), d.Name, "tx")
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.RxPackets), d.Name, "rx")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.TxBytes), d.Name, "tx")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.RxBytes), d.Name, "rx")
		ch <- prometheus.MustNewConstMetric(c.dr, prometheus.CounterValue, float64(s.NoPeer), d.Name, "no_peer")
		ch <- prometheus.MustNewConstMetric(c.dr, prometheus.CounterValue, float64(s.Dropped), d.Name, "other")
	}
}
