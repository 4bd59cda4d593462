package cniplugin

import (
	"encoding/json"
	"net/netip"
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
