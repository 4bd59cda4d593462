package dataplane

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
)

// TestTxChecksumOffload: a VXLAN device declared with TxChecksum off or on
// gets tx-checksum-ip-generic so in a real namespace; turned back by hand,
// the next full pass puts it right; OffloadAsIs leaves it alone.
func TestTxChecksumOffload(t *testing.T) {
	name := "wtdr-dp-" + strings.ToLower(rand.Text()[:8])
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	ip("-n", name, "link", "add", "eth0", "type", "bridge")
	ip("-n", name, "addr", "add", "198.18.120.2/24", "dev", "eth0")
	ip("-n", name, "link", "set", "eth0", "up")

	n, err := NewNetlink(slog.New(slog.DiscardHandler), ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// The test's own reader: an ethtool socket opened in the namespace.
	var eth *ethtool.Ethtool
	if err := nsrun.Do(ns, func() (err error) { eth, err = ethtool.NewEthtool(); return err }); err != nil {
		t.Fatal(err)
	}
	defer eth.Close()
	feature := func() bool {
		t.Helper()
		f, err := eth.Features("flannel.1")
		if err != nil {
			t.Fatal(err)
		}
		on, ok := f[TxChecksumFeature]
		if !ok {
			t.Fatalf("flannel.1 has no %s feature: %v", TxChecksumFeature, f)
		}
		return on
	}
	link := Link{Name: "flannel.1", VNI: 1, MTU: 1450, Local: netip.MustParseAddr("198.18.120.2"),
		MAC: MAC{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.245.0.0/32")}
	pass := func(o Offload, full bool) Changes {
		t.Helper()
		s := NewState()
		l := link
		l.TxChecksum = o
		s.Links[l.Name] = l
		c, err := n.Reconcile(context.Background(), s, full)
		if err != nil {
			t.Fatalf("reconcile (%s, full %v): %v", o, full, err)
		}
		return c
	}

	pass(OffloadAsIs, true)
	if !feature() {
		t.Fatal("a new VXLAN device has checksum offload off: the kernel default changed, this test proves nothing")
	}
	pass(OffloadOff, false)
	if feature() {
		t.Fatal("TxChecksum off: still on")
	}
	if c := pass(OffloadOff, false); c.LinksUpdated != 0 {
		t.Errorf("a second pass wrote the link again: %+v", c)
	}
	// By hand, as `ethtool -K flannel.1 tx-checksum-ip-generic on`.
	if err := eth.Change("flannel.1", map[string]bool{TxChecksumFeature: true}); err != nil {
		t.Fatal(err)
	}
	if c := pass(OffloadOff, true); !feature() && c.LinksUpdated == 1 {
		t.Logf("full pass repaired it: %+v", c)
	} else {
		t.Fatalf("full pass after a manual change: offload on %v, changes %+v", feature(), c)
	}
	pass(OffloadOn, false)
	if !feature() {
		t.Fatal("TxChecksum on: still off")
	}
	if err := eth.Change("flannel.1", map[string]bool{TxChecksumFeature: false}); err != nil {
		t.Fatal(err)
	}
	pass(OffloadAsIs, true)
	if feature() {
		t.Fatal("OffloadAsIs changed the device")
	}
}

func TestTxChecksumBroken(t *testing.T) {
	for release, want := range map[string]bool{
		"3.10.0-1127.8.2.el7.x86_64": true,
		"4.19.123":                   true,
		"5.4.0-150-generic":          true,
		"5.6.19":                     true,
		"5.7.0":                      false,
		"5.15.0-91-generic":          false,
		"6.18.44-fc-v1098":           false,
		"6.8.0-51-generic":           false,
		"":                           false,
		"garbage":                    false,
		"5.x":                        false,
	} {
		if got := TxChecksumBroken(release); got != want {
			t.Errorf("TxChecksumBroken(%q) = %v, want %v", release, got, want)
		}
	}
	for _, c := range []struct {
		setting, release string
		want             Offload
	}{
		{"auto", "5.4.0", OffloadOff}, {"auto", "6.1.0", OffloadAsIs}, {"on", "5.4.0", OffloadOn}, {"off", "6.1.0", OffloadOff},
	} {
		if got := TxChecksumSetting(c.setting, c.release); got != c.want {
			t.Errorf("TxChecksumSetting(%q, %q) = %s, want %s", c.setting, c.release, got, c.want)
		}
	}
}
