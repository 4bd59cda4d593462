package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
	"github.com/weft-net/weft/internal/tools/lab"
)

// TestKubeVXLAN runs flanneld --kube-subnet-mgr on three hosts against a
// real kube-apiserver (default settings, watch cache on). The API server
// listens on 127.0.0.1 in the root namespace; the hosts reach it through a
// relay on the hub, and authenticate as kube-flannel's service account
// under deploy/'s RBAC. The test plays kube-controller-manager: it creates
// the Node objects with their podCIDRs.
func TestKubeVXLAN(t *testing.T) {
	const underlay = "198.18.21.0/24"
	hub := netip.MustParseAddr("198.18.21.1")
	start := time.Now()
	srv := kubetest.Start(t, kubetest.Options{ExtraIPs: []netip.Addr{hub}})
	t.Logf("kube-apiserver: ready %v after exec (%v including etcd and certificates)", srv.Ready.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	ctx := kubetest.Context(t, 5*time.Minute)
	manifest, err := os.ReadFile(filepath.Join("..", "deploy", "kube-flannel.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubetest.Apply(ctx, srv.Config(srv.AdminToken), manifest, false); err != nil {
		t.Fatalf("apply deploy/kube-flannel.yml: %v", err)
	}

	c := newCluster(t, "wtku", 3, underlay, `{}`)
	addr, err := c.Expose(6443, srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := srv.Kubeconfig(t, "flannel", "https://"+addr, srv.FlannelToken)
	netConf := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"10.21.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	nodeName := func(h *lab.Host) string { return fmt.Sprintf("wtku-node%d", h.Index+1) }
	for _, h := range c.Hosts {
		cidr := fmt.Sprintf("10.21.%d.0/24", 10*(h.Index+1))
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(h)}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
		if _, err := srv.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.Env = []string{"NODE_NAME=" + nodeName(h)}
	}
	flags := []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kubeconfig, "--net-config-path=" + netConf, "--resync-period=2s"}
	up := time.Now()
	c.startAll(flags...)
	t.Logf("3 hosts leased their podCIDRs %v after %v", c.subnets, time.Since(up).Round(10*time.Millisecond))
	c.addBridges()
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	t.Run("subnet is the podCIDR", func(t *testing.T) {
		for _, h := range c.Hosts {
			if want := netip.MustParsePrefix(fmt.Sprintf("10.21.%d.0/24", 10*(h.Index+1))); c.subnets[h.Index] != want {
				t.Errorf("%s: subnet %s, want the podCIDR %s", h.NS, c.subnets[h.Index], want)
			}
		}
	})

	t.Run("flannel.1 addresses reachable", func(t *testing.T) {
		for _, a := range c.Hosts {
			for _, b := range c.Hosts {
				if a != b {
					if err := c.pingUntil(a, netip.Addr{}, c.subnets[b.Index].Addr(), 15*time.Second); err != nil {
						t.Error(err)
					}
				}
			}
		}
	})
	t.Run("subnet to subnet", func(t *testing.T) { c.matrix(15 * time.Second) })

	t.Run("annotations and condition", func(t *testing.T) {
		var report strings.Builder
		for _, h := range c.Hosts {
			n, err := srv.Admin.CoreV1().Nodes().Get(ctx, nodeName(h), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			a := n.Annotations
			const p = "flannel.alpha.coreos.com/"
			mac := strings.Fields(c.sh(h, "cat", "/sys/class/net/flannel.1/address"))
			wantData := fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac[0])
			if a[p+"kube-subnet-manager"] != "true" || a[p+"backend-type"] != "vxlan" || a[p+"public-ip"] != h.IP.String() || a[p+"backend-data"] != wantData {
				t.Errorf("%s annotations %v; want vxlan, public-ip %s, backend-data %s", n.Name, a, h.IP, wantData)
			}
			// kubectl get nodes -o yaml, the part weft wrote.
			fmt.Fprintf(&report, "- name: %s\n  podCIDR: %s\n  annotations:\n", n.Name, n.Spec.PodCIDR)
			keys := make([]string, 0, len(a))
			for k := range a {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				v, _ := json.Marshal(a[k])
				fmt.Fprintf(&report, "    %s: %s\n", k, v)
			}
			waitFor(t, n.Name+" NetworkUnavailable=False", 10*time.Second, func() bool {
				n, err := srv.Admin.CoreV1().Nodes().Get(ctx, nodeName(h), metav1.GetOptions{})
				if err != nil {
					return false
				}
				for _, cond := range n.Status.Conditions {
					if cond.Type == corev1.NodeNetworkUnavailable {
						return cond.Status == corev1.ConditionFalse && cond.Reason == "FlannelIsUp"
					}
				}
				return false
			})
		}
		t.Logf("nodes as weft left them:\n%s", report.String())
	})

	t.Run("VTEP MAC survives a restart without its device", func(t *testing.T) {
		before := strings.TrimSpace(c.sh(h2, "cat", "/sys/class/net/flannel.1/address"))
		if err := c.Stop(h2, syscall.SIGTERM); err != nil {
			t.Fatalf("%s: flanneld exit on SIGTERM: %v", h2.NS, err)
		}
		// As after a reboot: the device is gone, the node annotation stays.
		c.sh(h2, "ip", "link", "del", "flannel.1")
		if err := c.Start(h2, flags...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, h2.NS+" flannel.1 back", 15*time.Second, func() bool {
			out, err := c.Exec(context.Background(), h2, "cat", "/sys/class/net/flannel.1/address")
			return err == nil && strings.TrimSpace(out) != ""
		})
		if after := strings.TrimSpace(c.sh(h2, "cat", "/sys/class/net/flannel.1/address")); after != before {
			t.Errorf("%s: VTEP MAC %s after restart, was %s", h2.NS, after, before)
		}
		if err := c.pingUntil(h1, netip.Addr{}, c.subnets[h2.Index].Addr(), 15*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("node deletion removes routes", func(t *testing.T) {
		gone := c.subnets[h3.Index]
		if err := srv.Admin.CoreV1().Nodes().Delete(ctx, nodeName(h3), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			took := waitFor(t, h.NS+" to drop the route to "+gone.String(), 10*time.Second, func() bool {
				return strings.TrimSpace(c.sh(h, "ip", "route", "show", gone.String())) == ""
			})
			t.Logf("%s dropped the route to %s %v after the node was deleted", h.NS, gone, took.Round(time.Millisecond))
		}
		waitFor(t, h3.NS+" flanneld to exit after its node was deleted", 10*time.Second, func() bool {
			done, err := h3.Exited()
			if done && err == nil {
				t.Errorf("%s: flanneld exited 0 after losing its node, want non-zero", h3.NS)
			}
			return done
		})
	})

	t.Run("podCIDR assigned late", func(t *testing.T) {
		// The node registers again, before kube-controller-manager has
		// given it a podCIDR: flanneld waits (an actionable warning, no
		// crash loop), and comes up once it is assigned.
		_ = c.Stop(h3, syscall.SIGKILL) // reap the exited process
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(h3)}}
		if _, err := srv.Admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(h3.SubnetFile); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(h3, flags...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, h3.NS+" to report the missing podCIDR", 10*time.Second, func() bool {
			b, _ := os.ReadFile(h3.LogFile)
			return strings.Contains(string(b), "--allocate-node-cidrs")
		})
		if done, err := h3.Exited(); done {
			t.Fatalf("%s: flanneld exited while waiting for its podCIDR: %v", h3.NS, err)
		}
		cidr := "10.21.31.0/24"
		n, err := srv.Admin.CoreV1().Nodes().Get(ctx, nodeName(h3), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
		if _, err := srv.Admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := c.waitSubnet(h3); got.String() != cidr {
			t.Fatalf("%s: subnet %s, want %s", h3.NS, got, cidr)
		}
		for _, h := range []*lab.Host{h1, h2} {
			if err := c.pingUntil(h, netip.Addr{}, netip.MustParsePrefix(cidr).Addr(), 15*time.Second); err != nil {
				t.Error(err)
			}
		}
	})
}
