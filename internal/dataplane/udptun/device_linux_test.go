package udptun_test

import (
	"crypto/rand"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/dataplane/udptun"
)

// The test namespaces are joined by a veth on 198.18.100.0/24 (the
// underlay); the overlay is 10.77.0.0/16, one /24 per side.
var (
	underlay = [2]netip.Prefix{netip.MustParsePrefix("198.18.100.1/24"), netip.MustParsePrefix("198.18.100.2/24")}
	subnets  = [2]netip.Prefix{netip.MustParsePrefix("10.77.1.0/24"), netip.MustParsePrefix("10.77.2.0/24")}
	overlay  = netip.MustParsePrefix("10.77.0.0/16")
)

const port = 8285

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type side struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
	dev  *udptun.Device
}

// newPair makes two namespaces joined by a veth, each with a udp device
// wtudt0 addressed and routed as the backend plans it (the subnet's
// network address /32, the overlay through the device), and the
// subnet's first address on the loopback as the far end of a ping.
func newPair(t *testing.T) [2]*side {
	t.Helper()
	sfx := strings.ToLower(rand.Text()[:4])
	var s [2]*side
	for i := range s {
		name := "wtudf" + sfx + string(rune('a'+i))
		run(t, "ip", "netns", "add", name)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		h, err := netns.GetFromName(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		nl, err := netlink.NewHandleAt(h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nl.Close)
		s[i] = &side{name: name, h: h, nl: nl}
		run(t, "ip", "-n", name, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", s[0].name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", s[1].name)
	for i, x := range s {
		run(t, "ip", "-n", x.name, "addr", "add", underlay[i].String(), "dev", "veth0")
		run(t, "ip", "-n", x.name, "link", "set", "veth0", "up")
		run(t, "ip", "-n", x.name, "addr", "add", netip.PrefixFrom(subnets[i].Addr().Next(), 32).String(), "dev", "lo")
		d, err := udptun.Create(nil, x.h, udptun.Config{Name: "wtudt0", Local: underlay[i].Addr(), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		x.dev = d
		run(t, "ip", "-n", x.name, "link", "set", "wtudt0", "mtu", "1472", "up")
		run(t, "ip", "-n", x.name, "addr", "add", netip.PrefixFrom(subnets[i].Addr(), 32).String(), "dev", "wtudt0")
		run(t, "ip", "-n", x.name, "route", "add", overlay.String(), "dev", "wtudt0")
	}
	for i, x := range s {
		o := 1 - i
		err := x.dev.Update(map[netip.Prefix]netip.AddrPort{subnets[o]: netip.AddrPortFrom(underlay[o].Addr(), port)}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func ping(name string, dst netip.Addr, args ...string) error {
	a := append([]string{"netns", "exec", name, "ping", "-q", "-W", "1"}, args...)
	return exec.Command("ip", append(a, dst.String())...).Run()
}

func TestForwardsBothWays(t *testing.T) {
	s := newPair(t)
	far := subnets[1].Addr().Next()
	if err := ping(s[0].name, far, "-c", "3", "-i", "0.05"); err != nil {
		t.Fatalf("ping %s through the udp devices: %v", far, err)
	}
	// A ping that fills the device's MTU: 1472 - 28 bytes of headers.
	if err := ping(s[0].name, far, "-c", "1", "-s", "1444", "-M", "do"); err != nil {
		t.Fatalf("ping with a full-MTU packet: %v", err)
	}
	// The counters are bumped after the syscall that moved the packets,
	// so the reply can reach ping before its request is counted: wait.
	st := s[0].dev.Stats()
	for deadline := time.Now().Add(2 * time.Second); (st.TxPackets < 4 || st.RxPackets < 4) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		st = s[0].dev.Stats()
	}
	if st.TxPackets < 4 || st.RxPackets < 4 {
		t.Errorf("stats %+v: want ≥ 4 packets each way", st)
	}
	if got := s[0].dev.Peers(); len(got) != 1 || got[subnets[1]] != netip.AddrPortFrom(underlay[1].Addr(), port) {
		t.Errorf("peers = %v", got)
	}
}

// TestTTL: the overlay counts two hops (one per forwarder, as upstream's
// proxy), so a packet sent with TTL 2 dies at the receiving forwarder,
// and one with TTL 3 arrives.
func TestTTL(t *testing.T) {
	s := newPair(t)
	far := subnets[1].Addr().Next()
	if err := ping(s[0].name, far, "-c", "1", "-t", "3"); err != nil {
		t.Errorf("TTL 3: %v", err)
	}
	before := s[1].dev.Stats().Dropped
	if err := ping(s[0].name, far, "-c", "1", "-t", "2"); err == nil {
		t.Error("TTL 2 arrived")
	}
	if got := s[1].dev.Stats().Dropped; got != before+1 {
		t.Errorf("receiver dropped %d packets, want 1", got-before)
	}
}

func TestPeerRemovedStopsTraffic(t *testing.T) {
	s := newPair(t)
	far := subnets[1].Addr().Next()
	if err := s[0].dev.Update(nil, []netip.Prefix{subnets[1]}); err != nil {
		t.Fatal(err)
	}
	if err := ping(s[0].name, far, "-c", "1"); err == nil {
		t.Fatal("ping went through with no peer for its subnet")
	}
	if st := s[0].dev.Stats(); st.NoPeer == 0 {
		t.Errorf("stats %+v: no packet counted as having no peer", st)
	}
	if err := s[0].dev.Update(map[netip.Prefix]netip.AddrPort{subnets[1]: netip.AddrPortFrom(underlay[1].Addr(), port)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := ping(s[0].name, far, "-c", "1"); err != nil {
		t.Fatalf("ping after the peer came back: %v", err)
	}
}

func TestUpdateRefusesBadPeers(t *testing.T) {
	s := newPair(t)
	for _, bad := range []map[netip.Prefix]netip.AddrPort{
		{netip.MustParsePrefix("fd00::/64"): netip.MustParseAddrPort("198.18.100.2:8285")},
		{subnets[1]: netip.MustParseAddrPort("[fd00::1]:8285")},
		{subnets[1]: netip.MustParseAddrPort("198.18.100.2:0")},
	} {
		if err := s[0].dev.Update(bad, nil); err == nil {
			t.Errorf("Update(%v) accepted", bad)
		}
	}
}

// TestDeletedNetdevEndsDevice: deleting the TUN from outside ends the
// device, so the dataplane can see it and make a new one.
func TestDeletedNetdevEndsDevice(t *testing.T) {
	s := newPair(t)
	run(t, "ip", "-n", s[0].name, "link", "del", "wtudt0")
	select {
	case <-s[0].dev.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the device did not end after its netdev was deleted")
	}
	if err := s[0].dev.Close(); err != nil {
		t.Logf("close after the end: %v", err)
	}
}

// TestCloseDeletesNetdev: the TUN is not persistent.
func TestCloseDeletesNetdev(t *testing.T) {
	s := newPair(t)
	if err := s[0].dev.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s[0].nl.LinkByName("wtudt0"); err == nil {
		t.Fatal("wtudt0 is still there after Close")
	}
}

// TestNoAllocationPerPacket floods pings through the pair and checks that
// the process allocated far fewer objects than packets were forwarded.
func TestNoAllocationPerPacket(t *testing.T) {
	s := newPair(t)
	far := subnets[1].Addr().Next()
	if err := ping(s[0].name, far, "-c", "1"); err != nil { // warm up
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	tx0 := s[0].dev.Stats().TxPackets
	if err := ping(s[0].name, far, "-f", "-c", "2000"); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	// Each of the 2000 requests crosses both devices twice (there and
	// back): 8000 packet forwards.
	pkts := 2 * (s[0].dev.Stats().TxPackets - tx0)
	allocs := m1.Mallocs - m0.Mallocs
	t.Logf("%d mallocs for %d packets forwarded", allocs, 2*pkts)
	if pkts < 2000 || allocs > pkts/20 {
		t.Errorf("%d mallocs for %d packets forwarded: want ≪ one a packet", allocs, 2*pkts)
	}
}

// TestBulkTCP sends 50 MB over TCP through the pair: the bursts the TUN
// hands over with segmentation offload are cut into packets, sent with UDP
// GSO, received coalesced (GRO) and coalesced again into the TUN; a
// packet damaged or lost on the way would stall TCP far beyond the bound.
func TestBulkTCP(t *testing.T) {
	s := newPair(t)
	far := subnets[1].Addr().Next()
	srv := exec.Command("ip", "netns", "exec", s[1].name, "iperf3", "-s", "-1", "-B", far.String(), "-p", "5299")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	var out []byte
	var err error
	for try := 0; try < 20; try++ {
		time.Sleep(100 * time.Millisecond)
		out, err = exec.Command("ip", "netns", "exec", s[0].name, "timeout", "60", "iperf3", "-c", far.String(), "-p", "5299", "-n", "50M").CombinedOutput()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	st0, st1 := s[0].dev.Stats(), s[1].dev.Stats()
	if st1.RxBytes < 50e6 || st0.TxBytes < 50e6 {
		t.Errorf("sender sent %d bytes, receiver wrote %d: want ≥ 50 MB each", st0.TxBytes, st1.RxBytes)
	}
	t.Logf("sender %+v\nreceiver %+v", st0, st1)
}
