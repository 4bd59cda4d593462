package deploy

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/weft-net/weft/internal/config"
)

const upstreamKeys = "testdata/upstream-keys.yaml"

func TestChartLint(t *testing.T) {
	helm(t, "lint", "--strict", chartDir)
	helm(t, "lint", "--strict", chartDir, "-f", upstreamKeys)
	helm(t, "lint", "--strict", chartDir, "--set", "netpol.enabled=true,podCidr=,podCidrv6=fd00::/56,flannel.backend=host-gw")
}

// TestChartDefaultsAreTheManifest: with default values the chart renders
// kube-flannel.yml's objects exactly, all but the Namespace, which Helm
// users create (Helm owns the release namespace).
func TestChartDefaultsAreTheManifest(t *testing.T) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	want := parseObjects(t, data)
	ns := want["Namespace "+namespace]
	if ns == nil {
		t.Fatalf("%s has no Namespace %s", manifest, namespace)
	}
	delete(want, "Namespace "+namespace)
	got := render(t)
	if d := cmp.Diff(keys(want), keys(got)); d != "" {
		t.Errorf("objects (-manifest +chart):\n%s", d)
	}
	for k, w := range want {
		if g, ok := got[k]; ok {
			if d := cmp.Diff(w, g); d != "" {
				t.Errorf("%s (-manifest +chart):\n%s", k, d)
			}
		}
	}
}

func keys(o objects) []string {
	var ks []string
	for k := range o {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestChartUpstreamValues: a values file written for upstream's chart,
// with every key it has, renders what each key means.
func TestChartUpstreamValues(t *testing.T) {
	got := render(t, "-f", upstreamKeys)
	ds := typed[appsv1.DaemonSet](t, got["DaemonSet kube-flannel/kube-flannel-ds"])
	pod := ds.Spec.Template.Spec

	if got, want := pod.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}; !cmp.Equal(got, want) {
		t.Errorf("imagePullSecrets = %v; want %v", got, want)
	}
	if got, want := pod.NodeSelector, map[string]string{"network": "true"}; !cmp.Equal(got, want) {
		t.Errorf("nodeSelector = %v; want %v", got, want)
	}
	wantTol := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "network", Effect: corev1.TaintEffectNoSchedule}}
	if !cmp.Equal(pod.Tolerations, wantTol) {
		t.Errorf("tolerations = %+v; want %+v", pod.Tolerations, wantTol)
	}

	containers := map[string]corev1.Container{}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		containers[c.Name] = c
	}
	if n := len(pod.Containers); n != 1 {
		t.Errorf("%d containers with netpol.enabled=false; want 1", n)
	}
	for name, want := range map[string]string{
		"install-cni-plugin": "registry.example/flannel-cni-plugin:v1.9.1-flannel3",
		"install-cni":        "registry.example/weft:v9.9.9",
		"kube-flannel":       "registry.example/weft:v9.9.9",
	} {
		if got := containers[name].Image; got != want {
			t.Errorf("%s image = %q; want %q", name, got, want)
		}
	}
	fl := containers["kube-flannel"]
	if want := []string{"--ip-masq", "--kube-subnet-mgr", "--iface=eth1", "--healthz-port=9091"}; !cmp.Equal(fl.Args, want) {
		t.Errorf("args = %q; want %q", fl.Args, want)
	}
	if len(fl.Ports) != 1 || fl.Ports[0].ContainerPort != 9091 {
		t.Errorf("ports = %+v; want healthz 9091", fl.Ports)
	}
	if p := fl.LivenessProbe; p == nil || p.InitialDelaySeconds != 20 || p.PeriodSeconds != 15 || p.HTTPGet.Path != "/healthz" {
		t.Errorf("livenessProbe = %+v", p)
	}
	if p := fl.ReadinessProbe; p == nil || p.InitialDelaySeconds != 3 || p.PeriodSeconds != 7 || p.HTTPGet.Path != "/readyz" {
		t.Errorf("readinessProbe = %+v", p)
	}
	if got := fl.Resources.Limits[corev1.ResourceMemory]; got.Cmp(resource.MustParse("100Mi")) != 0 {
		t.Errorf("memory limit = %v; want 100Mi", &got)
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if hostPaths["cni-plugin"] != "/usr/libexec/cni" || hostPaths["cni"] != "/etc/cni/custom.d" {
		t.Errorf("host paths = %v; want cni-plugin at flannel.cniBinDir, cni at flannel.cniConfDir", hostPaths)
	}

	cm := typed[corev1.ConfigMap](t, got["ConfigMap kube-flannel/kube-flannel-cfg"])
	wantCNI := `{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": false,
        "isDefaultGateway": true
      }
    }
  ]
}
`
	if d := cmp.Diff(wantCNI, cm.Data["cni-conf.json"]); d != "" {
		t.Errorf("cni-conf.json is not flannel.cniConf (-want +got):\n%s", d)
	}
	// The daemon's own parser reads what the chart wrote.
	n, err := config.ParseNetwork([]byte(cm.Data["net-conf.json"]))
	if err != nil {
		t.Fatalf("net-conf.json: %v\n%s", err, cm.Data["net-conf.json"])
	}
	if n.Network.String() != "10.42.0.0/16" || n.IPv6Network.String() != "fd42::/56" || !n.EnableIPv4 || !n.EnableIPv6 {
		t.Errorf("networks: %+v", n)
	}
	if n.EnableNFTables == nil || !*n.EnableNFTables {
		t.Errorf("EnableNFTables = %v; want true", n.EnableNFTables)
	}
	wantBackend := config.Backend{Type: "vxlan", VNI: 4096, Port: 4789, GBP: true, DirectRouting: true, MTU: 1450}
	n.Backend.Raw = nil // the Backend object as written, kept for backends that parse their own options
	if !cmp.Equal(n.Backend, wantBackend) {
		t.Errorf("backend = %+v; want %+v", n.Backend, wantBackend)
	}
	// Windows-only, so not in config.Backend, but rendered as upstream does.
	if !strings.Contains(cm.Data["net-conf.json"], `"MacPrefix": "0E-2B"`) {
		t.Errorf("no MacPrefix:\n%s", cm.Data["net-conf.json"])
	}
	// The wireguard keys stay out of a vxlan config.
	for _, k := range []string{"PSK", "ListenPortV6", "Mode", "PersistentKeepaliveInterval"} {
		if strings.Contains(cm.Data["net-conf.json"], `"`+k+`"`) {
			t.Errorf("%s in a vxlan config:\n%s", k, cm.Data["net-conf.json"])
		}
	}
}

// TestChartWireguardAndIPv6Only: the other backends' keys, and an
// IPv6-only network, render as valid JSON with upstream's field names.
func TestChartWireguardAndIPv6Only(t *testing.T) {
	got := render(t, "-f", upstreamKeys, "--set", "podCidr=,flannel.backend=wireguard,flannel.enableNFTables=false")
	cm := typed[corev1.ConfigMap](t, got["ConfigMap kube-flannel/kube-flannel-cfg"])
	want := `{
  "EnableIPv4": false,
  "IPv6Network": "fd42::/56",
  "EnableIPv6": true,
  "EnableNFTables": false,
  "Backend": {
    "Type": "wireguard",
    "ListenPort": 4789,
    "ListenPortV6": 51822,
    "PSK": "not-used-by-vxlan",
    "MTU": 1450,
    "Mode": "auto",
    "PersistentKeepaliveInterval": 25
  }
}
`
	if d := cmp.Diff(want, cm.Data["net-conf.json"]); d != "" {
		t.Errorf("net-conf.json (-want +got):\n%s", d)
	}

	got = render(t, "--set", "flannel.backend=udp,flannel.backendPort=8300")
	cm = typed[corev1.ConfigMap](t, got["ConfigMap kube-flannel/kube-flannel-cfg"])
	if !strings.Contains(cm.Data["net-conf.json"], `"Port": 8300`) {
		t.Errorf("udp port missing:\n%s", cm.Data["net-conf.json"])
	}
}

// TestChartOptions: the switches that add or remove objects' parts.
func TestChartOptions(t *testing.T) {
	t.Run("skipCNIConfigInstallation", func(t *testing.T) {
		got := render(t, "--set", "flannel.skipCNIConfigInstallation=true")
		pod := typed[appsv1.DaemonSet](t, got["DaemonSet kube-flannel/kube-flannel-ds"]).Spec.Template.Spec
		if len(pod.InitContainers) != 1 || pod.InitContainers[0].Name != "install-cni-plugin" {
			t.Errorf("init containers = %v; want install-cni-plugin only", pod.InitContainers)
		}
	})
	t.Run("healthz off", func(t *testing.T) {
		got := render(t, "--set", "flannel.healthz.port=0")
		c := typed[appsv1.DaemonSet](t, got["DaemonSet kube-flannel/kube-flannel-ds"]).Spec.Template.Spec.Containers[0]
		if c.LivenessProbe != nil || c.ReadinessProbe != nil || len(c.Ports) != 0 || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--healthz") }) {
			t.Errorf("health server still configured: %+v", c)
		}
	})
	t.Run("older charts' image_cni", func(t *testing.T) {
		got := render(t, "--set", "flannel.image_cni.repository=old.example/cni,flannel.image_cni.tag=v1.1.2")
		c := typed[appsv1.DaemonSet](t, got["DaemonSet kube-flannel/kube-flannel-ds"]).Spec.Template.Spec.InitContainers[0]
		if c.Image != "old.example/cni:v1.1.2" {
			t.Errorf("install-cni-plugin image = %q", c.Image)
		}
	})
	t.Run("netpol", func(t *testing.T) {
		got := render(t, "--set", "netpol.enabled=true")
		pod := typed[appsv1.DaemonSet](t, got["DaemonSet kube-flannel/kube-flannel-ds"]).Spec.Template.Spec
		if len(pod.Containers) != 2 || pod.Containers[1].Image != "registry.k8s.io/networking/kube-network-policies:v1.0.0" {
			t.Errorf("containers = %+v", pod.Containers)
		}
		if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == "lib-modules" }) {
			t.Error("no lib-modules volume")
		}
		role := typed[rbacv1.ClusterRole](t, got["ClusterRole flannel"])
		if !slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "networkpolicies") }) {
			t.Errorf("ClusterRole cannot read NetworkPolicies: %+v", role.Rules)
		}
	})
}

// TestChartDocumentsUpstreamKeys: every key of the upstream values file
// appears in values.yaml, as a key or in a comment, so each is documented.
func TestChartDocumentsUpstreamKeys(t *testing.T) {
	ours, err := os.ReadFile(chartDir + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(upstreamKeys)
	if err != nil {
		t.Fatal(err)
	}
	upstream := parseObjects(t, data)
	if len(upstream) != 1 {
		t.Fatalf("%s: %d documents", upstreamKeys, len(upstream))
	}
	var walk func(path string, m map[string]any)
	n := 0
	walk = func(path string, m map[string]any) {
		for k, v := range m {
			n++
			if !regexp.MustCompile(`(?m)^\s*(?:#\s*)?` + regexp.QuoteMeta(k) + `:`).Match(ours) {
				t.Errorf("values.yaml does not mention %s%s", path, k)
			}
			// resources and nodeSelector are Kubernetes' maps, not the chart's keys.
			if sub, ok := v.(map[string]any); ok && k != "resources" && k != "nodeSelector" {
				walk(path+k+".", sub)
			}
		}
	}
	for _, o := range upstream {
		walk("", o)
	}
	if n < 40 {
		t.Errorf("only %d keys in %s", n, upstreamKeys)
	}
}
