package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
	"github.com/weft-net/weft/internal/tools/lab"
)

// The Kubernetes-mode half of the interop and takeover proof: upstream
// flanneld v0.28.9 and weft run --kube-subnet-mgr against one real
// kube-apiserver, read each other's node annotations, and take a node over
// from each other.

// annPrefix is kube-flannel's default --kube-annotation-prefix.
const annPrefix = "flannel.alpha.coreos.com/"

// kubeAPI is a real kube-apiserver with deploy/'s RBAC applied. It is
// started before the lab, so that it outlives the daemons.
type kubeAPI struct {
	t   *testing.T
	srv *kubetest.Server
	ctx context.Context
}

// startKubeAPI starts the server for a lab on underlay (its hub, .1,
// relays to it), with extra kube-apiserver flags if any.
func startKubeAPI(t *testing.T, underlay string, args ...string) *kubeAPI {
	t.Helper()
	hub := netip.MustParsePrefix(underlay).Masked().Addr().Next()
	srv := kubetest.Start(t, kubetest.Options{ExtraIPs: []netip.Addr{hub}, Args: args})
	ctx := kubetest.Context(t, 10*time.Minute)
	manifest, err := os.ReadFile(filepath.Join("..", "deploy", "kube-flannel.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubetest.Apply(ctx, srv.Config(srv.AdminToken), manifest, false); err != nil {
		t.Fatalf("apply deploy/kube-flannel.yml: %v", err)
	}
	return &kubeAPI{t: t, srv: srv, ctx: ctx}
}

// store is the storeSetup of Kubernetes mode: it plays
// kube-controller-manager, creating a Node named after each host's
// namespace with the podCIDRs cidrs gives it, writes netconf as the
// mounted net-conf.json, and returns kube-flannel's flags.
func (k *kubeAPI) store(netconf string, cidrs func(h *lab.Host) []string) storeSetup {
	return func(c *cluster) leaseStore {
		t := k.t
		t.Helper()
		addr, err := c.Expose(6443, k.srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		kubeconfig := k.srv.Kubeconfig(t, "flannel", "https://"+addr, k.srv.FlannelToken)
		path := filepath.Join(t.TempDir(), "net-conf.json")
		if err := os.WriteFile(path, []byte(netconf), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, h := range c.Hosts {
			cs := cidrs(h)
			// With an annotation, as kubelet registers nodes: upstream
			// v0.28.9 panics on a node without any (it assigns to the
			// nil map).
			n := &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: h.NS, Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0"}},
				Spec:       corev1.NodeSpec{PodCIDR: cs[0], PodCIDRs: cs},
			}
			if _, err := k.srv.Admin.CoreV1().Nodes().Create(k.ctx, n, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			h.Env = []string{"NODE_NAME=" + h.NS}
		}
		return leaseStore{
			flags: []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + path},
			lease: func(h *lab.Host) (string, error) { return k.lease(c, h) },
		}
	}
}

// lease is the leaseReader of Kubernetes mode. A node's lease is its
// podCIDRs and the annotations its daemon published; a swap must keep the
// Node (same UID), the podCIDRs, every annotation and the
// NetworkUnavailable=False condition, and each backend-data annotation
// must name the MAC of the device it describes.
func (k *kubeAPI) lease(c *cluster, h *lab.Host) (string, error) {
	n, err := k.srv.Admin.CoreV1().Nodes().Get(k.ctx, h.NS, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	a := n.Annotations
	var b strings.Builder
	fmt.Fprintf(&b, "node %s (uid %s) podCIDRs %v", n.Name, n.UID, n.Spec.PodCIDRs)
	for _, key := range []string{"kube-subnet-manager", "backend-type", "public-ip", "backend-data", "public-ipv6", "backend-v6-data"} {
		if v, ok := a[annPrefix+key]; ok {
			fmt.Fprintf(&b, ", %s=%s", key, v)
		}
	}
	var errs []error
	cond := "NetworkUnavailable unset"
	for _, cd := range n.Status.Conditions {
		if cd.Type == corev1.NodeNetworkUnavailable {
			cond = fmt.Sprintf("NetworkUnavailable=%s (%s)", cd.Status, cd.Reason)
			if cd.Status != corev1.ConditionFalse {
				errs = append(errs, fmt.Errorf("node %s: %s", n.Name, cond))
			}
		}
	}
	fmt.Fprintf(&b, ", %s", cond)
	typ := a[annPrefix+"backend-type"]
	if a[annPrefix+"kube-subnet-manager"] != "true" || (typ != "vxlan" && typ != "host-gw") {
		errs = append(errs, fmt.Errorf("node %s: not published as a vxlan or host-gw flannel node: %v", n.Name, a))
	}
	if got := a[annPrefix+"public-ip"]; got != h.IP.String() {
		errs = append(errs, fmt.Errorf("node %s: public-ip %q, want %s", n.Name, got, h.IP))
	}
	for _, f := range []struct{ key, dev string }{{"backend-data", "flannel.1"}, {"backend-v6-data", "flannel-v6.1"}} {
		data, ok := a[annPrefix+f.key]
		if !ok {
			continue
		}
		if typ == "host-gw" {
			// host-gw has no backend data: both daemons publish JSON null.
			if data != "null" {
				errs = append(errs, fmt.Errorf("node %s: host-gw %s %q, want null", n.Name, f.key, data))
			}
			continue
		}
		var d struct {
			VNI     int
			VtepMAC string
		}
		if err := json.Unmarshal([]byte(data), &d); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %s %q: %v", n.Name, f.key, data, err))
			continue
		}
		if mac := c.linkMAC(h, f.dev); d.VNI != 1 || d.VtepMAC != mac {
			errs = append(errs, fmt.Errorf("node %s: %s %s, but %s has MAC %q", n.Name, f.key, data, f.dev, mac))
		}
	}
	return b.String(), errors.Join(errs...)
}

// podCIDRs gives host i the /24 10.<n>.<10(i+1)>.0 and, when dual, the /64
// fd00:<n>:0:<10(i+1)>::.
func podCIDRs(n int, dual bool) func(h *lab.Host) []string {
	return func(h *lab.Host) []string {
		cs := []string{fmt.Sprintf("10.%d.%d.0/24", n, 10*(h.Index+1))}
		if dual {
			cs = append(cs, fmt.Sprintf("fd00:%d:0:%d::/64", n, 10*(h.Index+1)))
		}
		return cs
	}
}

// kubeNetConf is kube-flannel's net-conf.json for network 10.<n>.0.0/16
// (and fd00:<n>::/48 when dual), vxlan.
func kubeNetConf(n int, dual bool) string {
	return kubeNetConfBackend(n, dual, `{"Type":"vxlan"}`)
}

// kubeNetConfBackend is kubeNetConf with another Backend object.
func kubeNetConfBackend(n int, dual bool, backend string) string {
	if dual {
		return fmt.Sprintf(`{"Network":"10.%d.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:%d::/48","Backend":%s}`, n, n, backend)
	}
	return fmt.Sprintf(`{"Network":"10.%d.0.0/16","Backend":%s}`, n, backend)
}

// TestKubeMixed runs upstream flanneld v0.28.9 on two hosts and weft on a
// third, --kube-subnet-mgr against one real kube-apiserver, vxlan, IPv4
// and dual-stack: each publishes its node annotations (checked against its
// devices), and each programs the others from theirs, so pods attached
// through our CNI plugin on every host reach each other.
func TestKubeMixed(t *testing.T) {
	up := upstreamFlanneld(t)
	for i, dual := range []bool{false, true} {
		name := map[bool]string{false: "vxlan", true: "vxlan-dual-stack"}[dual]
		t.Run(name, func(t *testing.T) {
			n := 50 + i
			underlay, u6 := fmt.Sprintf("198.18.%d.0/24", n), ""
			if dual {
				u6 = fmt.Sprintf("fd18:%d::/64", n)
			}
			k := startKubeAPI(t, underlay)
			c := newClusterV6(t, fmt.Sprintf("wtkm%d", i), 3, underlay, u6, "")
			st := k.store(kubeNetConf(n, dual), podCIDRs(n, dual))(c)
			// Hosts 1 and 3 run upstream, 2 ours.
			c.Hosts[0].Flanneld, c.Hosts[2].Flanneld = up, up
			c.startOneByOne(st.flags...)
			for _, h := range c.Hosts {
				want := podCIDRs(n, dual)(h)
				if c.subnets[h.Index].String() != want[0] || (dual && c.subnets6[h.Index].String() != want[1]) {
					t.Errorf("%s: subnets %s %s, want the podCIDRs %v", h.NS, c.subnets[h.Index], c.subnets6[h.Index], want)
				}
			}

			var pods []*lab.Pod
			for _, h := range c.Hosts {
				pods = append(pods, c.addPod(h, "p1"))
			}
			want := 3 * 2
			if dual {
				want *= 2
			}
			if got := c.podMatrix(pods, 20*time.Second); got != want {
				t.Errorf("%d of %d pod pairs answered", got, want)
			}

			// The annotations each wrote, as the others read them.
			for _, h := range c.Hosts {
				who := "weft"
				if h.Flanneld == up {
					who = "upstream"
				}
				l, err := st.lease(h)
				if err != nil {
					t.Errorf("%s (%s): %v", h.NS, who, err)
				}
				if dual {
					for _, key := range []string{"public-ipv6=" + h.IPv6.String(), "backend-v6-data="} {
						if !strings.Contains(l, key) {
							t.Errorf("%s (%s): no %s in %s", h.NS, who, key, l)
						}
					}
				}
				t.Logf("%s (%s): %s", h.NS, who, l)
			}
			t.Logf("%s: %d pod pairs answered across 2 upstream hosts and 1 weft host in kube mode", name, want)
		})
	}
}

// TestKubeTakeover is TestTakeover in Kubernetes mode: host B's daemon is
// swapped upstream → upstream (the baseline) → weft → weft → weft (new
// binary) → upstream under traffic, host A runs upstream throughout, and
// each swap must keep the Node's podCIDRs, annotations (the VTEP MAC
// among them, equal to flannel.1's) and NetworkUnavailable=False.
func TestKubeTakeover(t *testing.T) {
	d := takeoverDaemons(t)
	for i, tc := range []struct {
		name, backend string
		dual          bool
	}{
		{"vxlan", `{"Type":"vxlan"}`, false},
		{"vxlan-dual-stack", `{"Type":"vxlan"}`, true},
		{"vxlan-directrouting", `{"Type":"vxlan","DirectRouting":true}`, false},
		{"host-gw", `{"Type":"host-gw"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 52 + i
			u6 := ""
			if tc.dual {
				u6 = fmt.Sprintf("fd18:%d::/64", n)
			}
			k := startKubeAPI(t, fmt.Sprintf("198.18.%d.0/24", n))
			newTakeover(t, fmt.Sprintf("wtkt%d", i), n, u6, false, d.up, k.store(kubeNetConfBackend(n, tc.dual, tc.backend), podCIDRs(n, tc.dual))).run(d)
		})
	}
}

// TestKernelMulticastNeigh: the swap monitor ignores the kernel's own
// multicast neighbour entries, and nothing else.
func TestKernelMulticastNeigh(t *testing.T) {
	for line, want := range map[string]bool{
		"Deleted ff02::16 dev flannel.1 lladdr 33:33:00:00:00:16 NOARP":                true,
		"Deleted 224.0.0.22 dev flannel.1 lladdr 01:00:5e:00:00:16 NOARP":              true,
		"Deleted 10.52.10.0 dev flannel.1 lladdr 3a:db:30:83:3b:32 PERMANENT":          false,
		"Deleted 10.52.10.0/24 via 10.52.10.0 dev flannel.1 onlink":                    false,
		"Deleted multicast ff00::/8 dev flannel.1 table local proto kernel metric 256": false,
		"Deleted 3a:db:30:83:3b:32 dev flannel.1 dst 198.18.52.11 self permanent":      false,
	} {
		if got := kernelMulticastNeigh(line); got != want {
			t.Errorf("kernelMulticastNeigh(%q) = %v, want %v", line, got, want)
		}
	}
}
