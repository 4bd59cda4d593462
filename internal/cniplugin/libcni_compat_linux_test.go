package cniplugin

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// TestLibcniEveryVersion runs kube-flannel's conflist at every spec
// version upstream's plugin accepts (it declares containernetworking's
// version.All), with the real delegates: ADD, CHECK where the spec has it
// (0.4.0 on), and DEL, and checks that each result comes back in the
// version the runtime asked for.
func TestLibcniEveryVersion(t *testing.T) {
	t.Parallel()
	for _, v := range version.All.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			h := newCNIHost(t)
			h.writeEnv(envV4)
			conf := h.conflist(v, `{"hairpinMode":true,"isDefaultGateway":true}`)

			raw := h.mustRun("add", conf, nil)
			var head struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(raw, &head); err != nil {
				t.Fatalf("ADD result %s: %v", raw, err)
			}
			if head.CNIVersion != v {
				t.Errorf("ADD result version = %q, want %q: %s", head.CNIVersion, v, raw)
			}
			res, err := version.NewResult(v, raw)
			if err != nil {
				t.Fatalf("ADD result does not parse as %s: %v\n%s", v, err, raw)
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			got := resultAddrs(t, cur)
			if len(got) != 1 || !netip.MustParsePrefix("10.5.52.0/24").Contains(got[0].Addr()) {
				t.Fatalf("ADD addresses = %v, want one in 10.5.52.0/24", got)
			}
			pod := got[0].Addr()
			if a := h.addrs(h.ctrNS, "eth0"); len(a) != 1 || a[0] != got[0] {
				t.Errorf("container eth0 addresses = %v, want %v", a, got[0])
			}
			if rts := h.routes(); !contains(rts, "10.5.0.0/16 via 10.5.52.1") {
				t.Errorf("container routes %v lack the cluster network", rts)
			}

			if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
				h.mustRun("check", conf, nil)
			}

			h.mustRun("del", conf, nil)
			if h.allocated(pod) || h.savedConfig() {
				t.Errorf("after DEL: allocated %v, saved config %v; want neither", h.allocated(pod), h.savedConfig())
			}
			h.mustRun("del", conf, nil)
		})
	}
}

// TestLibcniUpstreamSeveralNetworks gives the real plugins a subnet.env in
// upstream's form with two cluster networks per family, comma-separated:
// the pod gets an address of each family and a route to every network.
func TestLibcniUpstreamSeveralNetworks(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	if err := os.MkdirAll(filepath.Dir(h.subnetFile), 0o755); err != nil {
		t.Fatal(err)
	}
	file := "FLANNEL_NETWORK=10.42.0.0/16,10.43.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd00:42::/56,fd00:43::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if err := os.WriteFile(h.subnetFile, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := h.conflist("1.0.0", `{"hairpinMode":true}`)
	got := resultAddrs(t, h.add("1.0.0", conf, nil))
	if len(got) != 2 || !netip.MustParsePrefix("10.42.3.0/24").Contains(got[0].Addr()) ||
		!netip.MustParsePrefix("fd00:42:0:3::/64").Contains(got[1].Addr()) {
		t.Fatalf("ADD addresses = %v, want one in 10.42.3.0/24 and one in fd00:42:0:3::/64", got)
	}
	rts := h.routes()
	for _, want := range []string{"10.42.0.0/16 via 10.42.3.1", "10.43.0.0/16 via 10.42.3.1",
		"fd00:42::/56 via fd00:42:0:3::1", "fd00:43::/56 via fd00:42:0:3::1"} {
		if !contains(rts, want) {
			t.Errorf("container routes %v lack %q", rts, want)
		}
	}
	h.mustRun("check", conf, nil)
	h.mustRun("del", conf, nil)
	for _, p := range got {
		if h.allocated(p.Addr()) {
			t.Errorf("%v still allocated after DEL", p.Addr())
		}
	}
}
