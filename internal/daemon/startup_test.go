package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
)

// waitExit waits for Run to return and hands its error back.
func (h *harness) waitExit() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		h.t.Fatal("daemon kept running")
		return nil
	}
}

// TestDaemonRefusesBackendMTUAboveUnderlay: a Backend.MTU the kernel would
// refuse over the chosen interface (1600 on eth0's 1500) stops the daemon
// with a one-line error naming the field, before it takes a lease or
// touches the kernel.
func TestDaemonRefusesBackendMTUAboveUnderlay(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1600}}`)
	h.start()
	err := h.waitExit()
	const want = "network config: Backend.MTU: 1600 leaves 1550 for flannel.1, above the 1450 the kernel allows over eth0 (MTU 1500)"
	if err == nil || err.Error() != want {
		t.Fatalf("Run = %v\nwant %s", err, want)
	}
	if n := len(h.store.Leases()); n != 0 {
		t.Errorf("%d leases taken", n)
	}
	if s := h.dp.Kernel().String(); strings.Contains(s, "flannel.1") {
		t.Errorf("device created:\n%s", s)
	}
}

// TestDaemonStartsWithChartMTU: the kube-flannel chart's mtu: 1500 on a
// 1500-byte underlay runs, with flannel.1 and FLANNEL_MTU at 1450.
func TestDaemonStartsWithChartMTU(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1500}}`)
	h.start()
	h.waitState("device", func(s string) bool {
		return strings.Contains(s, "link flannel.1 vxlan id 1") && strings.Contains(s, " mtu 1450 ")
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		env, err := subnetenv.Read(h.opts.SubnetFile)
		if err == nil && env.MTU == 1450 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subnet.env = %+v, %v; want FLANNEL_MTU=1450", env, err)
		}
	}
}

func TestOneLine(t *testing.T) {
	inner := errors.New("b")
	err := oneLine{errors.Join(errors.New("a"), inner)}
	if err.Error() != "a; b" || !errors.Is(err, inner) {
		t.Errorf("oneLine = %q, Is(inner) = %v", err, errors.Is(err, inner))
	}
}

// TestDaemonRefusesUnknownBackend: a backend type no package provides (one
// of upstream's we do not have yet, or a typo) stops the daemon before it
// takes a lease, with a one-line error naming the field and listing the
// types there are.
func TestDaemonRefusesUnknownBackend(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlna"}}`)
	h.start()
	err := h.waitExit()
	if err == nil || !strings.HasPrefix(err.Error(), `network config: Backend.Type: "vxlna" is not supported (supported: `) ||
		!strings.Contains(err.Error(), "host-gw") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Run = %v", err)
	}
	if n := len(h.store.Leases()); n != 0 {
		t.Errorf("%d leases taken", n)
	}
}

// TestDaemonRefuses: the backends upstream ships that weft does not serve
// are refused before any lease is taken, in one line that says why and
// what to use: tencent-vpc (a cloud API we cannot serve) and ipsec (no ESP
// in the kernel weft is tested on), the latter with upstream's own options
// present, which must not turn the refusal into an option error.
func TestDaemonRefuses(t *testing.T) {
	psk := strings.Repeat("0123456789abcdef", 6)
	for _, tc := range []struct {
		typ, config, use string
	}{
		{"tencent-vpc", `{"Network":"10.5.0.0/16","Backend":{"Type":"tencent-vpc"}}`, "host-gw"},
		{"ipsec", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec","PSK":"` + psk +
			`","UDPEncap":true,"ESPProposal":"aes128gcm16-sha256-prfsha256-ecp256"}}`, "use wireguard"},
		{"ipsec", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec","PSK":"short"}}`, "use wireguard"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			h := newHarness(t, tc.config)
			h.start()
			err := h.waitExit()
			if err == nil || !strings.HasPrefix(err.Error(), `network config: Backend.Type: "`+tc.typ+`" is not supported by weft: `) ||
				!strings.Contains(err.Error(), tc.use) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Run = %v", err)
			}
			t.Log(err)
			if n := len(h.store.Leases()); n != 0 {
				t.Errorf("%d leases taken", n)
			}
		})
	}
}

// TestDaemonAlloc: the alloc backend leases a subnet in upstream's format,
// writes subnet.env with the underlay's MTU, lists its peers and touches
// nothing in the kernel.
func TestDaemonAlloc(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`)
	h.board = &Board{}
	h.store.Put(lease.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.7")}})
	before := h.dp.Kernel().String()
	h.start()
	s := h.waitStatus("the peer listed", func(s httpapi.Status) bool { return len(s.Peers) == 1 })
	if s.Backend != "alloc" || s.Peers[0].Subnet != "10.5.7.0/24" {
		t.Errorf("status: backend %q, peers %+v", s.Backend, s.Peers)
	}
	own := h.own()
	if own.Attrs.BackendType != "" || own.Attrs.BackendData != nil {
		t.Errorf("own lease attrs %+v, want no backend type or data", own.Attrs)
	}
	var env subnetenv.Env
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if env, err = subnetenv.Read(h.opts.SubnetFile); err == nil && env.MTU == 1500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("subnet.env = %+v, %v; want FLANNEL_MTU=1500", env, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if env.Subnet != subnetenv.GatewayOf(own.Subnet) {
		t.Errorf("subnet.env subnet %s, lease %s", env.Subnet, own.Subnet)
	}
	if after := h.dp.Kernel().String(); after != before {
		t.Errorf("kernel changed:\n%s\nwas:\n%s", after, before)
	}
}

// TestDaemonIPIP: against the fake kernel (with the module), the ipip
// backend builds flannel.ipip and a route per peer; without the module it
// stops at start naming it and the alternatives.
func TestDaemonIPIP(t *testing.T) {
	h := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`)
	h.store.Put(lease.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), Attrs: lease.Attrs{BackendType: "ipip", PublicIP: netip.MustParseAddr("192.168.1.7")}})
	h.start()
	h.waitState("ipip device and route", func(s string) bool {
		return strings.Contains(s, "link flannel.ipip ipip local 192.168.1.10 mtu 1480 addr 10.5.255.0/32") &&
			strings.Contains(s, "route 10.5.7.0/24 via 192.168.1.7 dev flannel.ipip onlink")
	})

	lacking := newHarness(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`)
	lacking.dp.LackKind(dataplane.KindIPIP)
	lacking.start()
	err := lacking.waitExit()
	if err == nil || !strings.Contains(err.Error(), "ipip") || !strings.Contains(err.Error(), "use a backend this kernel supports (host-gw, ") || !strings.Contains(err.Error(), "wireguard) or one with the module") ||
		strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "add route") {
		t.Fatalf("Run = %v", err)
	}
}
