package doctor

import (
	"context"
	"crypto/rand"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/httpapi"
)

// TestRealNamespace runs the checks through SysHost against two real
// namespaces joined by a veth pair, each with a flannel.1 VXLAN device
// routing the other's subnet (as flanneld would), and injects the faults
// for real: forwarding off, strict rp_filter, a foreign route inside the
// cluster network, checksum corruption on the wire, a nested tunnel as
// underlay. --fix must clear the fixable ones in the kernel.
func TestRealNamespace(t *testing.T) {
	suffix := strings.ToLower(rand.Text()[:6])
	a, b := "wtdr-a-"+suffix, "wtdr-b-"+suffix
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{a, b} {
		sh("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	sh("ip", "link", "add", "wtdr"+suffix[:4], "netns", a, "type", "veth", "peer", "name", "eth0", "netns", b)
	sh("ip", "-n", a, "link", "set", "wtdr"+suffix[:4], "name", "eth0")
	for i, ns := range []string{a, b} {
		n := string('1' + byte(i))
		ip := func(args ...string) { t.Helper(); sh(append([]string{"ip", "-n", ns}, args...)...) }
		ip("link", "set", "lo", "up")
		ip("addr", "add", "198.18.121."+n+"/24", "dev", "eth0")
		ip("link", "set", "eth0", "up")
		ip("link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0", "local", "198.18.121."+n, "dstport", "8472", "nolearning")
		ip("link", "set", "flannel.1", "address", "02:00:00:00:00:0"+n, "mtu", "1450", "up")
		ip("addr", "add", "10.99."+n+".0/32", "dev", "flannel.1")
		o := string('2' - byte(i)) // the other host
		ip("route", "add", "10.99."+o+".0/24", "via", "10.99."+o+".0", "dev", "flannel.1", "onlink", "proto", "87")
		ip("neigh", "add", "10.99."+o+".0", "lladdr", "02:00:00:00:00:0"+o, "dev", "flannel.1", "nud", "permanent")
		sh("bridge", "-n", ns, "fdb", "add", "02:00:00:00:00:0"+o, "dev", "flannel.1", "dst", "198.18.121."+o)
		sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	}
	nsA, err := netns.GetFromName(a)
	if err != nil {
		t.Fatal(err)
	}
	defer nsA.Close()
	host, err := NewHost(nsA)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if err := host.SetTxChecksum("flannel.1", true); err != nil { // the kernel's default; made sure
		t.Fatal(err)
	}
	st := &httpapi.Status{Backend: "vxlan", Lease: httpapi.LeaseStatus{Subnet: "10.99.1.0/24"},
		Host:    httpapi.HostStatus{Network: "10.99.0.0/16", MTU: 1450, Underlay: "eth0"},
		Devices: []string{"flannel.1"}, Peers: []httpapi.PeerStatus{{Subnet: "10.99.2.0/24"}}}
	env := &Env{Host: host, Status: st, Reach: SysReach{Host: host}}
	ctx := context.Background()
	run := func(name string, fix bool) []Finding {
		t.Helper()
		for _, c := range Checks() {
			if c.Name == name {
				return Run(ctx, env, []Check{c}, fix).Findings
			}
		}
		t.Fatalf("no check %s", name)
		return nil
	}
	expect := func(name string, level Level, want string, fix bool) {
		t.Helper()
		fs := run(name, fix)
		for _, f := range fs {
			if f.Level == level && strings.Contains(f.Message, want) {
				t.Logf("%s %s: %s (fixed %v)", f.Level, name, f.Message, f.Fixed)
				return
			}
		}
		t.Fatalf("%s (fix %v): want %s containing %q, got %+v", name, fix, level, want, fs)
	}
	sysctl := func(name string) string {
		v, err := host.Sysctl(name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Healthy first: the UDP probe crosses the real overlay and is answered.
	expect("ip_forward", OK, "ip_forward is 1", false)
	expect("tx-checksum", OK, "reached 1/1 sampled peers intact", false)
	expect("routes", OK, "no foreign route", false)
	expect("mtu", OK, "pod MTU 1450 fits underlay eth0", false)
	expect("mtu", OK, "don't-fragment probes of 1450 bytes reached 1/1 sampled peers", false)

	// A path narrower than our underlay (b's end of the link carries
	// 1400): nothing on a says so; the don't-fragment probe at the pod
	// MTU (1450 + VXLAN's 50 on the wire) goes unanswered.
	sh("ip", "-n", b, "link", "set", "eth0", "mtu", "1400")
	expect("mtu", Fail, "don't-fragment probes of 1450 bytes got no answer from 1/1 sampled peers (10.99.2.0)", false)
	sh("ip", "-n", b, "link", "set", "eth0", "mtu", "1500")
	expect("mtu", OK, "don't-fragment probes of 1450 bytes reached 1/1 sampled peers", false)

	sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	expect("ip_forward", Fail, "ip_forward is 0", false)
	expect("ip_forward", OK, "ip_forward is 0", true)
	if v := sysctl("net/ipv4/ip_forward"); v != "1" {
		t.Errorf("after --fix ip_forward = %s", v)
	}

	sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1")
	expect("rp_filter", Warn, "strict on eth0", false)
	expect("rp_filter", OK, "strict on eth0", true)
	if v := sysctl("net/ipv4/conf/eth0/rp_filter"); v != "2" {
		t.Errorf("after --fix eth0 rp_filter = %s", v)
	}

	// Kubernetes mode: bridged pod traffic must pass iptables. The sysctl
	// is per namespace (br_netfilter is loaded on this machine).
	st.Host.Kube = true
	sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
	expect("br_netfilter", Fail, "net.bridge.bridge-nf-call-iptables is 0", false)
	expect("br_netfilter", OK, "net.bridge.bridge-nf-call-iptables is 0", true)
	if v := sysctl("net/bridge/bridge-nf-call-iptables"); v != "1" {
		t.Errorf("after --fix bridge-nf-call-iptables = %s", v)
	}
	st.Host.Kube = false

	sh("ip", "-n", a, "route", "add", "10.99.7.0/24", "dev", "eth0")
	expect("routes", Fail, "route 10.99.7.0/24 dev eth0 proto 3 is inside the cluster network 10.99.0.0/16", false)
	sh("ip", "-n", a, "route", "del", "10.99.7.0/24", "dev", "eth0")

	// Corruption on the wire: a byte of the inner datagram's payload in
	// every VXLAN packet reaching b is overwritten (nftables, netdev
	// ingress hook, a raw payload write: no checksum updated), as a broken
	// offload leaves it. A veth pair hands checksums over unverified, so
	// a computes them in software (tx offload off on its eth0) and b
	// verifies them (rx offload off on its eth0). The outer UDP checksum
	// is 0 (VXLAN over IPv4): b decapsulates the packet and drops the
	// inner datagram for its bad checksum, answering nothing.
	nsB, err := netns.GetFromName(b)
	if err != nil {
		t.Fatal(err)
	}
	defer nsB.Close()
	hostB, err := NewHost(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer hostB.Close()
	if err := host.eth.Change("eth0", map[string]bool{"tx-checksum-ip-generic": false}); err != nil {
		t.Fatal(err)
	}
	if err := hostB.eth.Change("eth0", map[string]bool{"rx-checksum": false}); err != nil {
		t.Fatal(err)
	}
	nft := exec.Command("ip", "netns", "exec", b, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table netdev wtdr {
	chain ingress {
		type filter hook ingress device "eth0" priority 0;
		udp dport 8472 @th,464,8 set 0x5a
	}
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	expect("tx-checksum", Warn, "no answer from 1/1 sampled peers (10.99.2.0)", false)
	expect("tx-checksum", OK, "no answer from 1/1", true)
	if on, err := host.TxChecksum("flannel.1"); err != nil || on {
		t.Errorf("after --fix tx-checksum-ip-generic on=%v err=%v", on, err)
	}
	expect("tx-checksum", OK, "tx-checksum-ip-generic off", false)

	// A VXLAN tunnel (another overlay, a cloud's) as underlay whose MTU
	// claims the full 1500 of the veth under it: it carries 1450. Bound
	// to a device, the kernel refuses such an MTU; unbound (it sends where
	// the routes say: the default route's device here) it takes it. (This
	// kernel has no GRE or IPIP.)
	sh("ip", "-n", a, "route", "add", "default", "via", "198.18.121.2", "dev", "eth0")
	sh("ip", "-n", a, "link", "add", "tun1", "type", "vxlan", "id", "77", "local", "198.18.121.1", "remote", "198.18.121.2", "dstport", "4789")
	sh("ip", "-n", a, "link", "set", "tun1", "mtu", "1500", "up")
	st.Host.Underlay = "tun1"
	expect("mtu", Fail, "tun1 is a vxlan tunnel (nested) over eth0 (MTU 1500): it carries 1450 bytes, not its MTU 1500, so the pod MTU 1450 is 50 too high", false)
	sh("ip", "-n", a, "link", "set", "tun1", "mtu", "1450")
	st.Host.MTU = 1400
	sh("ip", "-n", a, "link", "set", "flannel.1", "mtu", "1400")
	expect("mtu", OK, "its MTU 1450 fits", false)
}
