package masq

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The functional tests check that the rules do their job. Topology, built
// around the test's "host" namespace:
//
//	pod  10.244.1.2/24, fd00:10:244:1::2/64 ── h-pod  host (forwarding)
//	ext  198.19.1.2/24, fd19:1::2/64        ── h-ext  198.19.1.1, fd19:1::1
//	rem  198.19.2.2/24, fd19:2::2/64        ── h-rem  198.19.2.1, fd19:2::1
//	     + pod address 10.244.2.2, fd00:10:244:2::2 (a remote node's pod)
//
// ext has no route to the pod network, so a pod's ping to it is answered
// only if it was masqueraded. rem routes the local pod subnet back to the
// host, as a peer node does over the overlay; pod-to-pod traffic to it must
// keep the pod's address. Both sides count arriving echo requests by
// source address with nft counters, so nothing depends on conntrack tools.

const (
	envExt = "WEFT_MASQ_EXT"
	envPod = "WEFT_MASQ_POD"
	envRem = "WEFT_MASQ_REM"
)

// probeNFT counts echo requests by source; host* and pod* are the
// addresses each side would see with and without masquerade.
const probeNFT = `table inet probe {
	counter host4 { }
	counter pod4 { }
	counter host6 { }
	counter pod6 { }
	chain in {
		type filter hook input priority filter; policy accept;
		ip saddr %s icmp type echo-request counter name "host4"
		ip saddr 10.244.1.2 icmp type echo-request counter name "pod4"
		ip6 saddr %s icmpv6 type echo-request counter name "host6"
		ip6 saddr fd00:10:244:1::2 icmpv6 type echo-request counter name "pod6"
	}
}
`

func buildTopology(t *testing.T, host string) []string {
	t.Helper()
	ext, pod, rem := newNetns(t), newNetns(t), newNetns(t)
	ipn := func(ns string, args ...string) {
		t.Helper()
		run(t, append([]string{"ip", "-n", ns}, args...)...)
	}
	for _, ns := range []string{host, ext, pod, rem} {
		ipn(ns, "link", "set", "lo", "up")
		// No duplicate address detection, link-local addresses included:
		// until it ends, IPv6 neighbour discovery on a fresh veth can
		// lose the first packets.
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	for _, l := range []struct {
		local, peer     string
		local4, peer4   string
		local6, peer6   string
		peerRoutes      [][]string
		hostRoutes      [][]string
		peerExtraAddrs  []string
		peerExtraAddrs6 []string
	}{
		{local: "h-ext", peer: ext, local4: "198.19.1.1/24", peer4: "198.19.1.2/24",
			local6: "fd19:1::1/64", peer6: "fd19:1::2/64"},
		{local: "h-pod", peer: pod, local4: "10.244.1.1/24", peer4: "10.244.1.2/24",
			local6: "fd00:10:244:1::1/64", peer6: "fd00:10:244:1::2/64",
			peerRoutes: [][]string{{"default", "via", "10.244.1.1"}, {"-6", "default", "via", "fd00:10:244:1::1"}}},
		{local: "h-rem", peer: rem, local4: "198.19.2.1/24", peer4: "198.19.2.2/24",
			local6: "fd19:2::1/64", peer6: "fd19:2::2/64",
			peerExtraAddrs: []string{"10.244.2.2/24"}, peerExtraAddrs6: []string{"fd00:10:244:2::2/64"},
			peerRoutes: [][]string{{"10.244.1.0/24", "via", "198.19.2.1"}, {"-6", "fd00:10:244:1::/64", "via", "fd19:2::1"}},
			hostRoutes: [][]string{{"10.244.2.0/24", "via", "198.19.2.2"}, {"-6", "fd00:10:244:2::/64", "via", "fd19:2::2"}}},
	} {
		ipn(host, "link", "add", "name", l.local, "type", "veth", "peer", "name", "eth0", "netns", l.peer)
		ipn(host, "addr", "add", l.local4, "dev", l.local)
		ipn(host, "addr", "add", l.local6, "dev", l.local, "nodad")
		ipn(host, "link", "set", l.local, "up")
		ipn(l.peer, "addr", "add", l.peer4, "dev", "eth0")
		ipn(l.peer, "addr", "add", l.peer6, "dev", "eth0", "nodad")
		for _, a := range l.peerExtraAddrs {
			ipn(l.peer, "addr", "add", a, "dev", "eth0")
		}
		for _, a := range l.peerExtraAddrs6 {
			ipn(l.peer, "addr", "add", a, "dev", "eth0", "nodad")
		}
		ipn(l.peer, "link", "set", "eth0", "up")
		for _, r := range l.peerRoutes {
			ipn(l.peer, append(routeArgs(r), "dev", "eth0")...)
		}
		for _, r := range l.hostRoutes {
			ipn(host, routeArgs(r)...)
		}
	}
	run(t, "ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	for _, p := range []struct{ ns, host4, host6 string }{
		{ext, "198.19.1.1", "fd19:1::1"},
		{rem, "198.19.2.1", "fd19:2::1"},
	} {
		cmd := exec.Command("ip", "netns", "exec", p.ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(fmt.Sprintf(probeNFT, p.host4, p.host6))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("probe counters in %s: %v\n%s", p.ns, err, out)
		}
	}
	// Wait until every link carries traffic both ways, so that a lost
	// packet later means a rule, not a link coming up.
	for _, p := range []struct{ ns, addr string }{
		{pod, "10.244.1.1"}, {pod, "fd00:10:244:1::1"},
		{host, "198.19.1.2"}, {host, "fd19:1::2"},
		{host, "10.244.2.2"}, {host, "fd00:10:244:2::2"},
	} {
		if err := pingRetry(p.ns, p.addr); err != nil {
			t.Fatalf("topology not ready: %v", err)
		}
	}
	return []string{envExt + "=" + ext, envPod + "=" + pod, envRem + "=" + rem}
}

// routeArgs turns {"-6", dst, "via", gw} into `ip -6 route add dst via gw`.
func routeArgs(r []string) []string {
	if r[0] == "-6" {
		return append([]string{"-6", "route", "add"}, r[1:]...)
	}
	return append([]string{"route", "add"}, r...)
}

var packetsRE = regexp.MustCompile(`packets (\d+)`)

// counter reads one probe counter in namespace ns.
func counter(t *testing.T, ns, name string) int {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "nft", "list", "counter", "inet", "probe", name)
	m := packetsRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// ping sends one echo request and waits a second for the reply.
func ping(ns, addr string) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w\n%s", addr, ns, err, out)
	}
	return nil
}

// pingRetry is ping for pings that should succeed, with a few tries so a
// busy machine does not fail the test. Each try is a new ping process, so
// a new ICMP id and a new conntrack entry, evaluated by the rules afresh.
func pingRetry(ns, addr string) error {
	var err error
	for range 3 {
		if err = ping(ns, addr); err == nil {
			return nil
		}
	}
	return err
}

func TestPrivMasqueradeNFTables(t *testing.T) {
	if inNetns(t, buildTopology) {
		testMasquerade(t, ModeNFTables)
	}
}

func TestPrivMasqueradeIPTables(t *testing.T) {
	if inNetns(t, buildTopology) {
		testMasquerade(t, ModeIPTables)
	}
}

func testMasquerade(t *testing.T, mode Mode) {
	ext, pod, rem := os.Getenv(envExt), os.Getenv(envPod), os.Getenv(envRem)
	type target struct {
		v6       bool
		external string // in ext, no route back
		remote   string // a remote pod, in rem
	}
	targets := []target{{false, "198.19.1.2", "10.244.2.2"}, {true, "fd19:1::2", "fd00:10:244:2::2"}}
	suffix := func(v6 bool) string {
		if v6 {
			return "6"
		}
		return "4"
	}

	// Without our rules the external side sees the pod's address and
	// cannot answer: the topology really needs masquerade.
	for _, tg := range targets {
		if err := ping(pod, tg.external); err == nil {
			t.Fatalf("pod reaches %s without masquerade; the topology is wrong", tg.external)
		}
		if n := counter(t, ext, "pod"+suffix(tg.v6)); n == 0 {
			t.Fatalf("%s never saw the pod's request", tg.external)
		}
	}

	m, err := Open(t.Context(), testLog(t), mode)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.0/24"),
		IPv6Network: net6, IPv6Subnet: sub6,
		Masquerade: true, FullyRandom: true, Forward: true,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Sync(t.Context(), Plan(cfg)); err != nil {
		t.Fatal(err)
	}

	for _, tg := range targets {
		s := suffix(tg.v6)
		hostBefore := counter(t, ext, "host"+s)
		if err := pingRetry(pod, tg.external); err != nil {
			t.Errorf("with masquerade: %v", err)
		}
		if n := counter(t, ext, "host"+s); n <= hostBefore {
			t.Errorf("%s did not see the host's address (host%s counter %d → %d)", tg.external, s, hostBefore, n)
		}

		podBefore, hostBefore := counter(t, rem, "pod"+s), counter(t, rem, "host"+s)
		if err := pingRetry(pod, tg.remote); err != nil {
			t.Errorf("pod to remote pod: %v", err)
		}
		if n := counter(t, rem, "pod"+s); n <= podBefore {
			t.Errorf("remote pod %s did not see the pod's own address (pod%s counter %d → %d)", tg.remote, s, podBefore, n)
		}
		if n := counter(t, rem, "host"+s); n != hostBefore {
			t.Errorf("pod-to-pod traffic to %s was masqueraded (host%s counter %d → %d)", tg.remote, s, hostBefore, n)
		}
	}
}
