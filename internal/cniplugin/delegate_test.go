package cniplugin

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/subnetenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// kubeFlannelConf is the flannel entry of kube-flannel's cni-conf.json as
// libcni hands it to the plugin.
const kubeFlannelConf = `{"name":"cbr0","cniVersion":"0.3.1","type":"flannel",
	"delegate":{"hairpinMode":true,"isDefaultGateway":true}}`

var (
	envV4 = subnetenv.Env{
		Networks: []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")},
		Subnet:   netip.MustParsePrefix("10.5.52.1/24"),
		MTU:      1450,
		IPMasq:   true,
	}
	envDual = subnetenv.Env{
		Networks:     []netip.Prefix{netip.MustParsePrefix("10.5.0.0/16")},
		Subnet:       netip.MustParsePrefix("10.5.52.1/24"),
		IPv6Networks: []netip.Prefix{netip.MustParsePrefix("fc00:5::/48")},
		IPv6Subnet:   netip.MustParsePrefix("fc00:5:0:34::1/64"),
		MTU:          1450,
		IPMasq:       true,
	}
	envV6 = subnetenv.Env{
		IPv6Networks: []netip.Prefix{netip.MustParsePrefix("fc00:5::/48")},
		IPv6Subnet:   netip.MustParsePrefix("fc00:5:0:34::1/64"),
		MTU:          1430,
		IPMasq:       true,
	}
)

func withEnv(e subnetenv.Env, f func(*subnetenv.Env)) subnetenv.Env {
	f(&e)
	return e
}

func TestBuildDelegateGolden(t *testing.T) {
	tests := []struct {
		name string
		conf string
		env  subnetenv.Env
	}{
		{"kube-flannel-v4", kubeFlannelConf, envV4},
		{"kube-flannel-dual-stack", kubeFlannelConf, envDual},
		{"kube-flannel-ipv6-only", kubeFlannelConf, envV6},
		{"minimal", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0"}`, envV4},
		// FLANNEL_IPMASQ=false: flanneld does not masquerade, so the bridge must.
		{"ipmasq-inverted", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0"}`,
			withEnv(envV4, func(e *subnetenv.Env) { e.IPMasq = false })},
		{"ipmasq-delegate-wins", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","delegate":{"ipMasq":false}}`,
			withEnv(envV4, func(e *subnetenv.Env) { e.IPMasq = false })},
		{"mtu-delegate-wins", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","delegate":{"mtu":1400}}`, envV4},
		{"mtu-absent-from-subnet-file", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0"}`,
			withEnv(envV4, func(e *subnetenv.Env) { e.MTU = 0 })},
		{"bridge-overrides", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","delegate":
			{"bridge":"mynet0","isGateway":false,"hairpinMode":false,"isDefaultGateway":false,"forceAddress":true}}`, envV4},
		{"custom-type", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","delegate":{"type":"ipvlan","master":"eth0"}}`, envV4},
		{"ipam-base", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","ipam":{"type":"host-local",
			"dataDir":"/var/lib/weft/ipam","routes":[{"dst":"10.96.0.0/12"},{"dst":"10.5.0.0/16","gw":"10.5.52.1"}]}}`, envDual},
		{"ipam-other-type", `{"name":"mynet","type":"flannel","cniVersion":"1.0.0","ipam":{"type":"whereabouts"}}`, envV4},
		{"runtime-config", `{"name":"cbr0","type":"flannel","cniVersion":"1.0.0","delegate":{"isDefaultGateway":true},
			"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}}`, envV4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNetConf([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			got, err := BuildDelegate(n, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join("testdata", "delegate", tt.name+".json"), marshalIndent(t, got))
		})
	}
}

func TestBuildDelegateDoesNotModifyNetConf(t *testing.T) {
	n, err := ParseNetConf([]byte(`{"name":"x","cniVersion":"1.0.0","delegate":{"hairpinMode":true},"ipam":{"routes":[{"dst":"10.96.0.0/12"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	before := marshalIndent(t, n)
	if _, err := BuildDelegate(n, envDual); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, marshalIndent(t, n)); diff != "" {
		t.Errorf("BuildDelegate modified its NetConf (-before +after):\n%s", diff)
	}
}

func TestBuildDelegateErrors(t *testing.T) {
	tests := []struct {
		name, conf string
		env        subnetenv.Env
		want       string
	}{
		{"routes not a list", `{"name":"x","ipam":{"routes":{"dst":"10.0.0.0/8"}}}`, envV4, `"ipam.routes" must be a list`},
		{"route bad dst", `{"name":"x","ipam":{"routes":[{"dst":"nonsense"}]}}`, envV4, `"ipam.routes"`},
		{"no subnet", `{"name":"x"}`, subnetenv.Env{MTU: 1450}, "neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET"},
		{"subnet without network", `{"name":"x"}`,
			withEnv(envV4, func(e *subnetenv.Env) { e.Networks = nil }), "FLANNEL_NETWORK and FLANNEL_SUBNET"},
		{"v6 subnet without network", `{"name":"x"}`,
			withEnv(envDual, func(e *subnetenv.Env) { e.IPv6Networks = nil }), "FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNetConf([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			_, err = BuildDelegate(n, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("BuildDelegate error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func marshalIndent(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// checkGolden compares got with the golden file, or rewrites the file
// under -update.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}
