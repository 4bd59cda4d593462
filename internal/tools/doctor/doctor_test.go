package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
)

// healthy returns a host and status with nothing wrong: a vxlan host on
// eth0 (MTU 1500), lease 10.244.3.0/24, two peers.
func healthy() (*fakeHost, *httpapi.Status) {
	h := &fakeHost{
		sysctls: map[string]string{
			"net/ipv4/ip_forward":                "1",
			"net/ipv4/conf/all/rp_filter":        "0",
			"net/ipv4/conf/eth0/rp_filter":       "2",
			"net/ipv4/conf/flannel.1/rp_filter":  "0",
			"net/bridge/bridge-nf-call-iptables": "1",
		},
		links: []Link{
			{Name: "lo", Kind: "", Index: 1, MTU: 65536},
			{Name: "eth0", Index: 2, MTU: 1500},
			{Name: "flannel.1", Kind: "vxlan", Index: 3, MTU: 1450, Parent: 2},
			{Name: "cni0", Kind: "bridge", Index: 4, MTU: 1450},
		},
		routes: []Route{
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), Dev: "eth0", Gw: netip.MustParseAddr("192.168.1.1"), Protocol: 3, Table: 254},
			{Dst: netip.MustParsePrefix("10.244.3.0/24"), Dev: "cni0", Protocol: 2, Table: 254},
			{Dst: netip.MustParsePrefix("10.244.7.0/24"), Dev: "flannel.1", Protocol: 87, Table: 254},
			{Dst: netip.MustParsePrefix("10.244.3.1/32"), Dev: "cni0", Protocol: 2, Table: 255, Type: "local"},
			{Dst: netip.MustParsePrefix("10.0.0.0/8"), Dev: "eth0", Gw: netip.MustParseAddr("192.168.1.2"), Protocol: 4, Table: 254},
		},
		txcsum:  map[string]bool{"flannel.1": false},
		release: "6.8.0-51-generic",
		procs:   []Process{{PID: 1, Name: "systemd"}, {PID: 42, Name: "flanneld", Cmdline: []string{"/opt/bin/flanneld", "--ip-masq"}}},
		files:   map[string]string{"/run/flannel/subnet.env": "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"},
		forward: Chain{Policy: "DROP", Rules: []string{"-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD"}},
	}
	st := &httpapi.Status{
		Backend: "vxlan",
		Lease:   httpapi.LeaseStatus{Subnet: "10.244.3.0/24", PublicIP: "192.168.1.10"},
		Host: httpapi.HostStatus{Network: "10.244.0.0/16", MTU: 1450, Underlay: "eth0", SubnetFile: "/run/flannel/subnet.env",
			Kube: true, ForwardRules: true},
		Devices: []string{"flannel.1"},
		Peers:   []httpapi.PeerStatus{{Subnet: "10.244.7.0/24"}, {Subnet: "10.244.9.0/24"}},
	}
	return h, st
}

func vxlanLease(t *testing.T, key, subnet, pub, mac string) lease.Event {
	t.Helper()
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}}
	return lease.Event{Key: key, Lease: l}
}

func healthyStore(t *testing.T) fakeStore {
	return fakeStore{leases: []lease.Event{
		vxlanLease(t, "10.244.3.0-24", "10.244.3.0/24", "192.168.1.10", "02:00:00:00:00:03"),
		vxlanLease(t, "10.244.7.0-24", "10.244.7.0/24", "192.168.1.11", "02:00:00:00:00:07"),
	}}
}

func byCheck(rep Report, name string) []Finding {
	var out []Finding
	for _, f := range rep.Findings {
		if f.Check == name {
			out = append(out, f)
		}
	}
	return out
}

func TestHealthyHostIsAllOK(t *testing.T) {
	h, st := healthy()
	e := &Env{Host: h, Status: st, Store: healthyStore(t),
		Reach: fakeReach{udp: map[netip.Addr]bool{netip.MustParseAddr("10.244.7.0"): true, netip.MustParseAddr("10.244.9.0"): true}, mtu: 1450}}
	rep := Run(context.Background(), e, Checks(), false)
	var buf bytes.Buffer
	rep.Print(&buf)
	for _, f := range rep.Findings {
		if f.Level != OK {
			t.Errorf("healthy host: %s %s: %s", f.Level, f.Check, f.Message)
		}
	}
	if !rep.OK || t.Failed() {
		t.Logf("report:\n%s", buf.String())
	}
	if got := strings.Count(buf.String(), "\n"); got < len(Checks()) {
		t.Errorf("%d lines for %d checks:\n%s", got, len(Checks()), buf.String())
	}
}

// TestFaults injects one fault per case into a healthy fake host and
// expects its check to report it at the level given, and --fix (when the
// fault is fixable) to clear it.
func TestFaults(t *testing.T) {
	peer7 := netip.MustParseAddr("10.244.7.0")
	cases := []struct {
		name    string
		check   string
		inject  func(h *fakeHost, st *httpapi.Status, e *Env)
		level   Level
		want    string // in the message
		fixable bool
	}{
		{"ip_forward off", "ip_forward", func(h *fakeHost, _ *httpapi.Status, _ *Env) { h.sysctls["net/ipv4/ip_forward"] = "0" },
			Fail, "ip_forward is 0", true},
		{"ipv6 forwarding off", "ip_forward", func(h *fakeHost, st *httpapi.Status, _ *Env) {
			st.Host.IPv6Network = "fd00:10::/56"
			h.sysctls["net/ipv6/conf/all/forwarding"] = "0"
		}, Fail, "net.ipv6.conf.all.forwarding is 0", true},
		{"rp_filter strict on the underlay", "rp_filter", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.sysctls["net/ipv4/conf/eth0/rp_filter"] = "1"
		}, Warn, "strict on eth0", true},
		{"rp_filter strict for all", "rp_filter", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.sysctls["net/ipv4/conf/all/rp_filter"] = "1"
			h.sysctls["net/ipv4/conf/eth0/rp_filter"] = "0"
		}, Warn, "strict on flannel.1", true},
		{"bridge-nf-call-iptables 0", "br_netfilter", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.sysctls["net/bridge/bridge-nf-call-iptables"] = "0"
		}, Fail, "bridge-nf-call-iptables is 0", true},
		{"br_netfilter not loaded", "br_netfilter", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			delete(h.sysctls, "net/bridge/bridge-nf-call-iptables")
		}, Fail, "br_netfilter is not loaded", false},
		{"FORWARD DROP without our rules", "forward-policy", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.forward.Rules = []string{"-A FORWARD -j DOCKER-USER"}
		}, Fail, "FORWARD policy DROP and no rule accepts", false},
		{"foreign route in the cluster network", "routes", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.routes = append(h.routes, Route{Dst: netip.MustParsePrefix("10.244.9.0/24"), Dev: "tun0", Protocol: 3, Table: 254})
		}, Fail, "route 10.244.9.0/24 dev tun0 proto 3 is inside the cluster network", false},
		{"second flanneld", "flanneld-processes", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.procs = append(h.procs, Process{PID: 77, Name: "flanneld", Cmdline: []string{"flanneld"}})
		}, Fail, "2 flanneld processes", false},
		{"subnet.env from another lease", "subnet.env", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.files["/run/flannel/subnet.env"] = strings.Replace(h.files["/run/flannel/subnet.env"], "10.244.3.1/24", "10.244.5.1/24", 1)
		}, Fail, "FLANNEL_SUBNET 10.244.5.0/24, the daemon 10.244.3.0/24", false},
		{"subnet.env missing", "subnet.env", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			delete(h.files, "/run/flannel/subnet.env")
		}, Fail, "cannot read /run/flannel/subnet.env", false},
		{"two leases, one PublicIP", "duplicate-leases", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			s := e.Store.(fakeStore)
			s.leases = append(s.leases, vxlanLease(t, "10.244.8.0-24", "10.244.8.0/24", "192.168.1.11", "02:00:00:00:00:08"))
			e.Store = s
		}, Fail, "2 leases share PublicIP 192.168.1.11: 10.244.7.0-24, 10.244.8.0-24", false},
		{"two leases, one VTEP MAC", "duplicate-leases", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			s := e.Store.(fakeStore)
			s.leases = append(s.leases, vxlanLease(t, "10.244.8.0-24", "10.244.8.0/24", "192.168.1.12", "02:00:00:00:00:07"))
			e.Store = s
		}, Fail, "share VTEP MAC 02:00:00:00:00:07", false},
		{"clock 2 min behind etcd", "clock-skew", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			s := e.Store.(fakeStore)
			s.skew = 2 * time.Minute
			e.Store = s
		}, Warn, "etcd's clock is 2m0s ahead of", false},
		{"clock 1 h ahead of etcd", "clock-skew", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			s := e.Store.(fakeStore)
			s.skew = -time.Hour
			e.Store = s
		}, Fail, "1h0m0s behind", false},
		{"offload on, affected kernel", "tx-checksum", func(h *fakeHost, _ *httpapi.Status, _ *Env) {
			h.txcsum["flannel.1"], h.release = true, "5.4.0-150-generic"
		}, Fail, "kernel 5.4.0-150-generic (before 5.7)", true},
		{"offload on, UDP probe unanswered", "tx-checksum", func(h *fakeHost, _ *httpapi.Status, e *Env) {
			h.txcsum["flannel.1"] = true
			e.Reach = fakeReach{udp: map[netip.Addr]bool{peer7: true}, mtu: 1450}
		}, Warn, "no answer from 1/2 sampled peers (10.244.9.0)", true},
		{"nested tunnel underlay", "mtu", func(h *fakeHost, st *httpapi.Status, _ *Env) {
			h.links = append(h.links, Link{Name: "wg0", Kind: "wireguard", Index: 9, MTU: 1500})
			st.Host.Underlay = "wg0"
		}, Fail, "wg0 is a wireguard tunnel (nested) over eth0 (MTU 1500): it carries 1440 bytes, not its MTU 1500", false},
		{"Backend.MTU too high", "mtu", func(h *fakeHost, st *httpapi.Status, _ *Env) {
			h.links[2].MTU, st.Host.MTU = 1480, 1480
		}, Fail, "flannel.1 has MTU 1480", false},
		{"path drops the pod MTU", "mtu", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			e.Reach = fakeReach{udp: map[netip.Addr]bool{}, mtu: 1400}
		}, Fail, "don't-fragment probes of 1450 bytes got no answer from 2/2", false},
		{"daemon not running", "daemon", func(_ *fakeHost, _ *httpapi.Status, e *Env) {
			e.Status, e.StatusErr = nil, context.DeadlineExceeded
		}, Warn, "cannot read the local flanneld's status", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, st := healthy()
			e := &Env{Host: h, Status: st, Store: healthyStore(t),
				Reach: fakeReach{udp: map[netip.Addr]bool{peer7: true, netip.MustParseAddr("10.244.9.0"): true}, mtu: 1450}}
			c.inject(h, st, e)
			var check []Check
			for _, k := range Checks() {
				if k.Name == c.check {
					check = append(check, k)
				}
			}
			rep := Run(context.Background(), e, check, false)
			var hit *Finding
			for i, f := range rep.Findings {
				if strings.Contains(f.Message, c.want) {
					hit = &rep.Findings[i]
				}
			}
			if hit == nil || hit.Level != c.level || hit.Fixable != c.fixable {
				t.Fatalf("want a %s finding (fixable %v) containing %q; got %+v", c.level, c.fixable, c.want, rep.Findings)
			}
			if hit.Level == Fail && rep.OK {
				t.Error("report OK with a failure")
			}
			if hit.Fix == "" && hit.Level != OK {
				t.Error("no fix given")
			}
			if !c.fixable {
				return
			}
			fixed := Run(context.Background(), e, check, true)
			for _, f := range fixed.Findings {
				if f.Level == Warn || f.Level == Fail {
					t.Errorf("after --fix: %s %s", f.Level, f.Message)
				}
			}
			if !fixed.OK || !strings.Contains(fixedMessages(fixed), c.want) {
				t.Errorf("--fix: the finding is not reported fixed: %+v", fixed.Findings)
			}
		})
	}
}

func fixedMessages(r Report) string {
	var s []string
	for _, f := range r.Findings {
		if f.Fixed {
			s = append(s, f.Message)
		}
	}
	return strings.Join(s, "\n")
}
