package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/kubeapi"
)

// Stores the bench knows.
const (
	StoreEtcd = "etcd"
	StoreKube = "kube"
)

// kubeSelf is the daemon's own node's pod subnet in Kubernetes mode: the
// last /24 of the bench's /9, which makePeers then skips.
var kubeSelf = subnetAt(maxSubnets - 1)

// kubeStore is a run's Kubernetes side: a kube-apiserver with its etcd,
// the daemon's node and flags, and an admin client that plays every other
// node's kubelet and flanneld.
type kubeStore struct {
	srv      *kubeapi.Server
	admin    kubernetes.Interface
	audit    string // audit log path
	flags    []string
	selfName string
}

// startKube starts kube-apiserver in dir, serving (through the lab hub's
// relay, added by expose) at hub, with flannel's RBAC.
func startKube(ctx context.Context, bin, dir string, hub netip.Addr) (*kubeStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	args, audit, err := auditArgs(dir, kubeapi.FlannelUser)
	if err != nil {
		return nil, err
	}
	srv, err := kubeapi.Start(kubeapi.Options{Binary: bin, Dir: dir, ExtraIPs: []netip.Addr{hub}, Args: args})
	if err != nil {
		return nil, err
	}
	k := &kubeStore{srv: srv, audit: audit, selfName: "bench-self"}
	cfg := srv.Config(srv.AdminToken)
	cfg.QPS, cfg.Burst = -1, 0 // the bench's own writes are not rate-limited
	cfg.UserAgent = "weft-bench"
	if k.admin, err = kubernetes.NewForConfig(cfg); err != nil {
		srv.Close()
		return nil, err
	}
	if err := k.rbac(ctx); err != nil {
		srv.Close()
		return nil, err
	}
	return k, nil
}

func (k *kubeStore) close() { k.srv.Close() }

// rbac grants flannel's service account what deploy/kube-flannel.yml
// does: get pods, get/list/watch nodes, patch nodes/status.
func (k *kubeStore) rbac(ctx context.Context) error {
	rbac := k.admin.RbacV1()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "flannel"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	}}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ClusterRole flannel: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "flannel"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "flannel", Namespace: "kube-flannel"}},
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ClusterRoleBinding flannel: %w", err)
	}
	return nil
}

// expose makes the server reachable from the lab host at addr (the hub's
// relay) and writes the daemon's kubeconfig and net-conf.json.
func (k *kubeStore) expose(dir, addr, netconf string) error {
	kc, err := k.srv.Kubeconfig("flannel", "https://"+addr, k.srv.FlannelToken)
	if err != nil {
		return err
	}
	nc := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(nc, []byte(netconf), 0o644); err != nil {
		return err
	}
	k.flags = []string{"--kube-subnet-mgr", "--kubeconfig-file=" + kc, "--net-config-path=" + nc}
	return nil
}

// createSelf registers the daemon's own node, its subnet allocated.
func (k *kubeStore) createSelf(ctx context.Context, ip netip.Addr) error {
	n := syntheticNode(0, kubeSelf, ip, time.Now())
	n.Name = k.selfName
	n.Labels["kubernetes.io/hostname"] = k.selfName
	n.Status.Addresses[1].Address = k.selfName
	// The daemon sets NetworkUnavailable itself.
	n.Status.Conditions = n.Status.Conditions[1:]
	if _, err := k.admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", n.Name, err)
	}
	return nil
}

// write annotates (with del: deletes) the nodes of ps, in parallel, as a
// burst of flanneld starts (nodes leaving) would arrive. first is ps[0]'s
// index among all peers.
func (k *kubeStore) write(ctx context.Context, ps []peer, first int, del bool) error {
	return parallel(ctx, len(ps), func(ctx context.Context, i int) error {
		if del {
			return deleteNode(ctx, k.admin, first+i)
		}
		return annotate(ctx, k.admin, first+i, ps[i])
	})
}

// requests counts the daemon's API requests so far.
func (k *kubeStore) requests() Requests {
	r, err := countRequests(k.audit)
	if err != nil {
		return Requests{}
	}
	return r
}

// churn patches every one of the n peer nodes' status (and the daemon's
// own) once per heartbeatPeriod, spread evenly, for rounds periods, as
// their kubelets would. It returns how many updates it made.
func (k *kubeStore) churn(ctx context.Context, n, rounds int) (int, error) {
	total := (n + 1) * rounds
	gap := heartbeatPeriod / time.Duration(n+1)
	start := time.Now()
	err := parallel(ctx, total, func(ctx context.Context, j int) error {
		// Update j is due at start + j·gap; workers that fall behind
		// catch up without waiting.
		if err := ctxsleep.For(ctx, time.Until(start.Add(time.Duration(j)*gap))); err != nil {
			return err
		}
		i := j % (n + 1)
		if i == 0 {
			return heartbeatNamed(ctx, k.admin, k.selfName, time.Now())
		}
		return heartbeatNamed(ctx, k.admin, nodeName(i), time.Now())
	})
	return total, err
}

// kernelCounter counts route, neighbour, FDB and link change
// notifications for one device (the daemon's, by ifindex) in a namespace:
// any write the daemon makes to its objects that changes something.
// Others' changes (the underlay's ARP entries ageing, the kernel's IPv6
// link-local route) are not counted.
type kernelCounter struct {
	done   chan struct{}
	count  chan chan int
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	links  chan netlink.LinkUpdate
}

func newKernelCounter(ns netns.NsHandle, ifindex int) (*kernelCounter, error) {
	c := &kernelCounter{done: make(chan struct{}), count: make(chan chan int),
		routes: make(chan netlink.RouteUpdate, 256), neighs: make(chan netlink.NeighUpdate, 256), links: make(chan netlink.LinkUpdate, 256)}
	if err := netlink.RouteSubscribeWithOptions(c.routes, c.done, netlink.RouteSubscribeOptions{Namespace: &ns}); err != nil {
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	if err := netlink.NeighSubscribeWithOptions(c.neighs, c.done, netlink.NeighSubscribeOptions{Namespace: &ns}); err != nil {
		close(c.done)
		return nil, fmt.Errorf("subscribe to neighbours: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(c.links, c.done, netlink.LinkSubscribeOptions{Namespace: &ns}); err != nil {
		close(c.done)
		return nil, fmt.Errorf("subscribe to links: %w", err)
	}
	go func() {
		n := 0
		for {
			select {
			case u := <-c.routes:
				// The kernel's own routes (an IPv6 link-local address
				// configured on the device) are not the daemon's writes.
				if u.LinkIndex == ifindex && u.Protocol != unix.RTPROT_KERNEL {
					n++
				}
			case u := <-c.neighs:
				if u.LinkIndex == ifindex {
					n++
				}
			case u := <-c.links:
				if u.Attrs().Index == ifindex {
					n++
				}
			case reply := <-c.count:
				reply <- n
			case <-c.done:
				return
			}
		}
	}()
	return c, nil
}

// n is the number of notifications so far.
func (c *kernelCounter) n() int {
	reply := make(chan int)
	c.count <- reply
	return <-reply
}

func (c *kernelCounter) close() { close(c.done) }
