package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
	"github.com/weft-net/weft/internal/lease/leasetest"
)

const (
	prefix    = "flannel.alpha.coreos.com"
	testLabel = "weft-test"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestKubeAPIServer runs everything that needs a real kube-apiserver on
// one server (starting one takes seconds): the deploy/ manifests first,
// validated by a server-side dry run and then applied, since their RBAC is
// what the store runs under in the subtests.
func TestKubeAPIServer(t *testing.T) {
	// The watch cache serves watches from memory and would hide etcd's
	// compaction from the WatchCompactionRelists case; without it, a watch
	// resumes in etcd and meets the compaction the way it does behind a
	// long outage in a real cluster. The e2e runs the default.
	srv := kubetest.Start(t, kubetest.Options{Args: []string{"--watch-cache=false"}})
	// Not a subtest: every subtest runs under the RBAC this applies, so
	// `-run TestKubeAPIServer/RBAC` works alone.
	testManifests(t, srv)
	t.Run("ClientMatchesClientset", func(t *testing.T) { testClientMatchesClientset(t, srv) })
	// The store under test runs on NewClient, as in flanneld.
	t.Run("Conformance", func(t *testing.T) {
		leasetest.Run(t, func(t *testing.T) leasetest.Harness { return newHarness(t, srv) })
	})
	t.Run("Acquire", func(t *testing.T) { testAcquire(t, srv) })
	t.Run("AcquireDualStackAndIPv6Only", func(t *testing.T) { testAcquireFamilies(t, srv) })
	t.Run("AcquireNoPodCIDR", func(t *testing.T) { testNoPodCIDR(t, srv) })
	t.Run("RBAC", func(t *testing.T) { testRBAC(t, srv) })
	t.Run("NetworkAvailable", func(t *testing.T) { testNetworkAvailable(t, srv) })
	t.Run("NodeNameFromPod", func(t *testing.T) { testNodeNameFromPod(t, srv) })
	t.Run("WatchNodes", func(t *testing.T) { testWatchNodes(t, srv) })
}

// manifests returns deploy/kube-flannel.yml, split into documents.
func manifests(t *testing.T) (all []byte, docs []string) {
	t.Helper()
	all, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "kube-flannel.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range regexp.MustCompile(`(?m)^---$`).Split(string(all), -1) {
		if strings.Contains(d, "\nkind:") || strings.HasPrefix(d, "kind:") {
			docs = append(docs, d)
		}
	}
	return all, docs
}

func testManifests(t *testing.T, srv *kubetest.Server) {
	t.Helper()
	ctx := kubetest.Context(t, time.Minute)
	cfg := srv.Config(srv.AdminToken)
	all, docs := manifests(t)
	// A dry run of namespaced objects needs their namespace to exist.
	for _, d := range docs {
		if strings.Contains(d, "kind: Namespace") {
			if _, err := kubetest.Apply(ctx, cfg, []byte(d), false); err != nil {
				t.Fatalf("apply the namespace: %v", err)
			}
		}
	}
	got, err := kubetest.Apply(ctx, cfg, all, true)
	if err != nil {
		t.Fatalf("server-side dry-run apply of deploy/kube-flannel.yml: %v", err)
	}
	want := []string{"Namespace kube-flannel", "ClusterRole flannel", "ClusterRoleBinding flannel",
		"ServiceAccount kube-flannel/flannel", "ConfigMap kube-flannel/kube-flannel-cfg", "DaemonSet kube-flannel/kube-flannel-ds"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("dry-run applied %q, want %q", got, want)
	}
	// The dry run stored nothing, and it does validate: a DaemonSet whose
	// selector does not match its pods is refused.
	if _, err := srv.Admin.AppsV1().DaemonSets("kube-flannel").Get(ctx, "kube-flannel-ds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after a dry run: get DaemonSet: err = %v, want NotFound", err)
	}
	var ds string
	for _, d := range docs {
		if strings.Contains(d, "kind: DaemonSet") {
			ds = d
		}
	}
	bad := strings.Replace(ds, "matchLabels:\n      app: flannel", "matchLabels:\n      app: not-flannel", 1)
	if bad == ds {
		t.Fatal("DaemonSet selector not found in the manifest")
	}
	if _, err := kubetest.Apply(ctx, cfg, []byte(bad), true); !apierrors.IsInvalid(err) {
		t.Errorf("dry-run apply of a DaemonSet with a mismatched selector: err = %v, want Invalid", err)
	}
	// For real now: the other subtests run as flannel's service account.
	if _, err := kubetest.Apply(ctx, cfg, all, false); err != nil {
		t.Fatalf("apply deploy/kube-flannel.yml: %v", err)
	}
	cm, err := srv.Admin.CoreV1().ConfigMaps("kube-flannel").Get(ctx, "kube-flannel-cfg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.ParseNetwork([]byte(cm.Data["net-conf.json"])); err != nil {
		t.Errorf("the ConfigMap's net-conf.json: %v", err)
	}
	var conflist struct {
		Plugins []struct {
			Type     string
			Delegate map[string]any
		}
	}
	if err := json.Unmarshal([]byte(cm.Data["cni-conf.json"]), &conflist); err != nil || len(conflist.Plugins) != 2 ||
		conflist.Plugins[0].Type != "flannel" || conflist.Plugins[0].Delegate["hairpinMode"] != true ||
		conflist.Plugins[0].Delegate["isDefaultGateway"] != true || conflist.Plugins[1].Type != "portmap" {
		t.Errorf("the ConfigMap's cni-conf.json = %s (%v), want flannel delegating with hairpinMode and isDefaultGateway, then portmap", cm.Data["cni-conf.json"], err)
	}
}

// flannelAPI is the store's client, as flanneld makes it (NewClient),
// with kube-flannel's permissions.
func flannelAPI(t testing.TB, srv *kubetest.Server, url string) API {
	t.Helper()
	c, err := NewClient(srv.ConfigAt(url, srv.FlannelToken), "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// flannelClient is a clientset with kube-flannel's permissions, for
// requests the store does not make (RBAC probes) and to compare NewClient
// with.
func flannelClient(t testing.TB, srv *kubetest.Server, url string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(srv.ConfigAt(url, srv.FlannelToken))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// resetNodes deletes the nodes earlier tests made (nodes are
// cluster-scoped, so each case starts from none).
func resetNodes(t testing.TB, c kubernetes.Interface) {
	t.Helper()
	ctx := kubetest.Context(t, 30*time.Second)
	sel := metav1.ListOptions{LabelSelector: testLabel}
	if err := c.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		t.Fatalf("delete test nodes: %v", err)
	}
	for {
		l, err := c.CoreV1().Nodes().List(ctx, sel)
		if err != nil {
			t.Fatalf("list test nodes: %v", err)
		}
		if len(l.Items) == 0 {
			return
		}
		if err := ctx.Err(); err != nil {
			t.Fatalf("test nodes not gone: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// makeNode creates a node as kubelet and kube-controller-manager would
// leave it: registered, with podCIDRs, and annotations if any.
func makeNode(t testing.TB, c kubernetes.Interface, name string, ann map[string]string, cidrs ...string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{testLabel: "1"}, Annotations: ann},
		Spec:       corev1.NodeSpec{PodCIDRs: cidrs},
	}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	out, err := c.CoreV1().Nodes().Create(kubetest.Context(t, 10*time.Second), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	return out
}

// peerAnnotations are the annotations flannel on a peer writes for l.
func peerAnnotations(a Annotations, l lease.Lease) map[string]string {
	m := map[string]string{a.SubnetKubeManaged: "true", a.BackendType: l.Attrs.BackendType}
	if l.Subnet.IsValid() {
		m[a.PublicIP] = addrString(l.Attrs.PublicIP)
		m[a.BackendData] = dataString(l.Attrs.BackendData)
	}
	if l.IPv6Subnet.IsValid() {
		m[a.PublicIPv6] = addrString(l.Attrs.PublicIPv6)
		m[a.BackendV6Data] = dataString(l.Attrs.BackendV6Data)
	}
	return m
}

// harness is the conformance suite's view of a real API server: the store
// runs as flannel's service account, through a proxy the Peer can cut;
// the Peer acts as the admin (and as other hosts' flannel).
type harness struct {
	srv     *kubetest.Server
	ann     Annotations
	netConf string
	proxy   *proxy
}

func newHarness(t *testing.T, srv *kubetest.Server) leasetest.Harness {
	resetNodes(t, srv.Admin)
	makeNode(t, srv.Admin, "self", nil, "10.5.19.0/24")
	p := startProxy(t, srv.Addr)
	h := &harness{srv: srv, ann: mustAnnotations(t, prefix), netConf: filepath.Join(t.TempDir(), "net-conf.json"), proxy: p}
	s, err := New(discard(), Config{
		Client: flannelAPI(t, srv, "https://"+p.addr()), NodeName: "self",
		AnnotationPrefix: prefix, NetConfigPath: h.netConf,
	})
	if err != nil {
		t.Fatal(err)
	}
	return leasetest.Harness{Store: s, Peer: h, Lacks: leasetest.Allocation | leasetest.Expiry | leasetest.Reservations | leasetest.RawKeys | leasetest.Reclaims}
}

func mustAnnotations(t testing.TB, p string) Annotations {
	t.Helper()
	a, err := NewAnnotations(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// peerName names the node that holds a peer's lease.
func peerName(id lease.ID) string {
	return "peer-" + strings.NewReplacer("&", "-", ":", "-").Replace(id.String())
}

func (h *harness) SetNetworkConfig(t testing.TB, doc []byte) {
	if err := os.WriteFile(h.netConf, doc, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) PutLease(t testing.TB, l lease.Lease) {
	t.Helper()
	if l.Reservation {
		t.Fatal("reservations do not exist in Kubernetes mode")
	}
	ctx := kubetest.Context(t, 10*time.Second)
	name := peerName(l.ID())
	ann := peerAnnotations(h.ann, l)
	n, err := h.srv.Admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		var cidrs []string
		for _, p := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if p.IsValid() {
				cidrs = append(cidrs, p.String())
			}
		}
		makeNode(t, h.srv.Admin, name, ann, cidrs...)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	n.Annotations = ann
	if _, err := h.srv.Admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update node %s: %v", name, err)
	}
}

func (h *harness) PutRaw(t testing.TB, key string, value []byte) {
	t.Fatal("raw keys do not exist in Kubernetes mode")
}

func (h *harness) Delete(t testing.TB, id lease.ID) {
	t.Helper()
	if err := h.srv.Admin.CoreV1().Nodes().Delete(kubetest.Context(t, 10*time.Second), peerName(id), metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete node: %v", err)
	}
}

func (h *harness) Expire(t testing.TB, id lease.ID) {
	t.Fatal("leases do not expire in Kubernetes mode")
}

func (h *harness) Compact(t testing.TB) {
	t.Helper()
	compact(t, h.srv)
}

// compact compacts the API server's etcd up to now, as it does on its own
// every few minutes: watches from before then get 410 Gone.
func compact(t testing.TB, srv *kubetest.Server) {
	t.Helper()
	ctx := kubetest.Context(t, 10*time.Second)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Etcd.ClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.Get(ctx, "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact etcd: %v", err)
	}
}

func (h *harness) Disconnect(t testing.TB) func() {
	h.proxy.setDown(true)
	return func() { h.proxy.setDown(false) }
}

// proxy relays TCP to the API server; while down it cuts every connection
// and refuses new ones, as a network partition would.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { l.Close(); p.setDown(true) })
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

func (p *proxy) serve() {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		go func() {
			out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				in.Close()
				return
			}
			if !p.track(in, out) {
				in.Close()
				out.Close()
				return
			}
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); done <- struct{}{} }()
			go func() { io.Copy(in, out); done <- struct{}{} }()
			<-done
			in.Close()
			out.Close()
		}()
	}
}

func network(t testing.TB, doc string) *config.Network {
	t.Helper()
	n, err := config.ParseNetwork([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func vxlanAttrs(ip, mac string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}
}

func newStore(t testing.TB, srv *kubetest.Server, node, netConf string) *Store {
	t.Helper()
	s, err := New(discard(), Config{Client: flannelAPI(t, srv, srv.URL), NodeName: node,
		AnnotationPrefix: prefix, NetConfigPath: netConf})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testAcquire(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	makeNode(t, srv.Admin, "n1", nil, "10.244.1.0/24")
	s := newStore(t, srv, "n1", "")
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	a := vxlanAttrs("192.168.0.11", "aa:bb:cc:00:00:01")
	l, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: a})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.1.0/24") || l.IPv6Subnet.IsValid() || !l.Attrs.Equal(a) || l.Revision <= 0 {
		t.Errorf("Acquire = %s %+v rev %d, want 10.244.1.0-24 with the request's attrs", l.Key(), l.Attrs, l.Revision)
	}
	if !l.Expiration.IsZero() || l.Reservation {
		t.Errorf("lease expiration %v reservation %v; want a lease that never expires", l.Expiration, l.Reservation)
	}
	node, err := srv.Admin.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Upstream's names and values, byte for byte.
	want := map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:01"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.168.0.11",
	}
	for k, v := range want {
		if node.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, node.Annotations[k], v)
		}
	}
	for k := range node.Annotations {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected annotation %s=%q", k, node.Annotations[k])
		}
	}

	// A restart: a new MAC is offered, Reuse sees the published lease and
	// keeps the old one; nothing changes, so nothing is written.
	var seen lease.Lease
	keep := func(e lease.Lease) lease.Attrs { seen = e; return e.Attrs }
	l2, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: vxlanAttrs("192.168.0.11", "aa:bb:cc:00:00:02"), Reuse: keep})
	if err != nil {
		t.Fatal(err)
	}
	if !seen.Attrs.Equal(a) || seen.ID() != l.ID() || !l2.Attrs.Equal(a) || l2.Revision != l.Revision {
		t.Errorf("re-acquire with Reuse: saw %+v, got %+v rev %d (first rev %d); want the first attrs kept and no write", seen.Attrs, l2.Attrs, l2.Revision, l.Revision)
	}

	// The operator's overwrite wins, in the annotation and in the lease.
	patch := `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip-overwrite":"203.0.113.7","flannel.alpha.coreos.com/node-public-ip":"192.168.0.99"}}}`
	if _, err := srv.Admin.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	l3, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: a})
	if err != nil {
		t.Fatal(err)
	}
	if l3.Attrs.PublicIP != netip.MustParseAddr("203.0.113.7") {
		t.Errorf("with public-ip-overwrite: lease PublicIP %s, want 203.0.113.7", l3.Attrs.PublicIP)
	}
	node, _ = srv.Admin.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if got := node.Annotations["flannel.alpha.coreos.com/public-ip"]; got != "203.0.113.7" {
		t.Errorf("public-ip annotation %q, want the overwrite", got)
	}
	v4, v6, err := s.NodePublicIPs(ctx)
	if err != nil || v4 != netip.MustParseAddr("192.168.0.99") || v6.IsValid() {
		t.Errorf("NodePublicIPs = %v, %v, %v; want 192.168.0.99 and none", v4, v6, err)
	}

	// A podCIDR outside the Network is a configuration error, named.
	_, err = s.Acquire(ctx, lease.Request{Network: network(t, `{"Network":"10.9.0.0/16"}`), Attrs: a})
	if err == nil || !strings.Contains(err.Error(), "not inside the flannel Network 10.9.0.0/16") {
		t.Errorf("podCIDR outside the Network: err = %v", err)
	}
	// Renew keeps the lease.
	if r, err := s.Renew(ctx, l3, time.Hour); err != nil || r.ID() != l3.ID() {
		t.Errorf("Renew = %s, %v", r.Key(), err)
	}
}

func testAcquireFamilies(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	makeNode(t, srv.Admin, "dual", nil, "10.244.2.0/24", "fd00:10:244:2::/64")
	makeNode(t, srv.Admin, "v6only", nil, "fd00:10:244:3::/64")
	dual := network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	a := vxlanAttrs("192.168.0.12", "aa:bb:cc:00:00:03")
	a.PublicIPv6 = netip.MustParseAddr("fd00::12")
	a.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:04"}`)
	l, err := newStore(t, srv, "dual", "").Acquire(ctx, lease.Request{Network: dual, Attrs: a})
	if err != nil || l.Key() != "10.244.2.0-24&fd00:10:244:2::-64" || !l.Attrs.Equal(a) {
		t.Fatalf("dual-stack Acquire = %s %+v, %v", l.Key(), l.Attrs, err)
	}
	node, _ := srv.Admin.CoreV1().Nodes().Get(ctx, "dual", metav1.GetOptions{})
	if node.Annotations[prefix+"/public-ipv6"] != "fd00::12" || node.Annotations[prefix+"/backend-v6-data"] != `{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:04"}` {
		t.Errorf("dual-stack annotations %v", node.Annotations)
	}

	v6 := network(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	a6 := lease.Attrs{PublicIPv6: netip.MustParseAddr("fd00::13"), BackendType: "host-gw"}
	s6 := newStore(t, srv, "v6only", "")
	l6, err := s6.Acquire(ctx, lease.Request{Network: v6, Attrs: a6})
	if err != nil || l6.Key() != "0.0.0.0-0&fd00:10:244:3::-64" || !l6.Attrs.Equal(a6) {
		t.Fatalf("IPv6-only Acquire = %s %+v, %v", l6.Key(), l6.Attrs, err)
	}
	node, _ = srv.Admin.CoreV1().Nodes().Get(ctx, "v6only", metav1.GetOptions{})
	if _, ok := node.Annotations[prefix+"/public-ip"]; ok || node.Annotations[prefix+"/backend-v6-data"] != "null" {
		t.Errorf("IPv6-only host-gw annotations %v: want no public-ip and backend-v6-data null, as upstream", node.Annotations)
	}
	// An IPv6-only store sees the dual-stack node's IPv6 half only.
	w := make(chan lease.Batch, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s6.Watch(wctx, w)
	b := <-w
	got := map[string]string{}
	for _, e := range b.Events {
		got[e.Key] = e.Lease.Key()
	}
	if got["dual"] != "0.0.0.0-0&fd00:10:244:2::-64" || got["v6only"] != l6.Key() || len(got) != 2 {
		t.Errorf("IPv6-only watch snapshot %v", got)
	}
}

func testNoPodCIDR(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	makeNode(t, srv.Admin, "fresh", nil)
	s := newStore(t, srv, "fresh", "")
	n := network(t, `{"Network":"10.244.0.0/16"}`)
	_, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: vxlanAttrs("192.168.0.14", "aa:bb:cc:00:00:05")})
	if !errors.Is(err, ErrNoPodCIDR) || !strings.Contains(err.Error(), "--allocate-node-cidrs") {
		t.Fatalf("Acquire without a podCIDR: err = %v, want ErrNoPodCIDR naming --allocate-node-cidrs", err)
	}
	// kube-controller-manager catches up; the daemon's retry then succeeds.
	node, _ := srv.Admin.CoreV1().Nodes().Get(ctx, "fresh", metav1.GetOptions{})
	node.Spec.PodCIDR, node.Spec.PodCIDRs = "10.244.7.0/24", []string{"10.244.7.0/24"}
	if _, err := srv.Admin.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, err := s.Acquire(ctx, lease.Request{Network: n, Attrs: vxlanAttrs("192.168.0.14", "aa:bb:cc:00:00:05")}); err != nil || l.Subnet.String() != "10.244.7.0/24" {
		t.Fatalf("Acquire after the podCIDR was assigned = %s, %v", l.Key(), err)
	}
	// An unknown node is an error too (retried by the daemon).
	if _, err := newStore(t, srv, "nonexistent", "").Acquire(ctx, lease.Request{Network: n}); !apierrors.IsNotFound(err) {
		t.Errorf("Acquire for a missing node: err = %v, want NotFound", err)
	}
}

func testRBAC(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	makeNode(t, srv.Admin, "r1", nil, "10.244.1.0/24")
	c := flannelClient(t, srv, srv.URL)
	patch := []byte(`{"metadata":{"annotations":{"x.example.com/probe":"1"}}}`)
	// What the ClusterRole grants...
	if _, err := c.CoreV1().Nodes().Patch(ctx, "r1", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("flannel: patch nodes/status: %v", err)
	}
	if _, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("flannel: list nodes: %v", err)
	}
	// ...and what it does not: the store must manage with the former.
	if _, err := c.CoreV1().Nodes().Patch(ctx, "r1", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("flannel: patch node (not status): err = %v, want Forbidden", err)
	}
	if err := c.CoreV1().Nodes().Delete(ctx, "r1", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("flannel: delete node: err = %v, want Forbidden", err)
	}
}

func testNetworkAvailable(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	makeNode(t, srv.Admin, "c1", nil, "10.244.1.0/24")
	// A cloud route controller (or kubelet) set it to True.
	patch := `{"status":{"conditions":[{"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated"},{"type":"Ready","status":"True","reason":"KubeletReady"}]}}`
	if _, err := srv.Admin.CoreV1().Nodes().PatchStatus(ctx, "c1", []byte(patch)); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, srv, "c1", "")
	if err := s.SetNetworkAvailable(ctx); err != nil {
		t.Fatalf("SetNetworkAvailable: %v", err)
	}
	node, _ := srv.Admin.CoreV1().Nodes().Get(ctx, "c1", metav1.GetOptions{})
	got := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range node.Status.Conditions {
		got[c.Type] = c
	}
	if c := got[corev1.NodeNetworkUnavailable]; c.Status != corev1.ConditionFalse || c.Reason != "FlannelIsUp" {
		t.Errorf("NetworkUnavailable = %+v, want False/FlannelIsUp", c)
	}
	if c := got[corev1.NodeReady]; c.Status != corev1.ConditionTrue || len(got) != 2 {
		t.Errorf("other conditions changed: %+v", node.Status.Conditions)
	}
}

func testNodeNameFromPod(t *testing.T, srv *kubetest.Server) {
	ctx := kubetest.Context(t, time.Minute)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds-abcde", Namespace: "kube-flannel"},
		Spec:       corev1.PodSpec{NodeName: "worker-7", Containers: []corev1.Container{{Name: "kube-flannel", Image: "weft"}}},
	}
	if _, err := srv.Admin.CoreV1().Pods("kube-flannel").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := flannelAPI(t, srv, srv.URL)
	env := map[string]string{"POD_NAME": "kube-flannel-ds-abcde", "POD_NAMESPACE": "kube-flannel"}
	if got, err := NodeName(ctx, c, func(k string) string { return env[k] }); err != nil || got != "worker-7" {
		t.Errorf("NodeName from the pod = %q, %v; want worker-7", got, err)
	}
	env["NODE_NAME"] = "explicit"
	if got, err := NodeName(ctx, c, func(k string) string { return env[k] }); err != nil || got != "explicit" {
		t.Errorf("NodeName with NODE_NAME = %q, %v", got, err)
	}
	if _, err := NodeName(ctx, c, func(string) string { return "" }); err == nil {
		t.Error("NodeName without any variable: no error")
	}
}

// testWatchNodes covers what the suite cannot say in lease terms: node
// heartbeats are not events, malformed annotations are, and a node that
// stops being managed is removed.
func testWatchNodes(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	ann := mustAnnotations(t, prefix)
	good := lease.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: vxlanAttrs("192.168.0.21", "aa:bb:cc:00:00:21")}
	makeNode(t, srv.Admin, "good", peerAnnotations(ann, good), "10.244.1.0/24")
	makeNode(t, srv.Admin, "unmanaged", nil, "10.244.2.0/24")
	bad := peerAnnotations(ann, good)
	bad[ann.PublicIP] = "not-an-ip"
	makeNode(t, srv.Admin, "bad", bad, "10.244.3.0/24")

	s := newStore(t, srv, "good", "")
	w := make(chan lease.Batch)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Watch(wctx, w) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch = %v after cancel", err)
		}
	}()
	next := func() lease.Batch {
		t.Helper()
		select {
		case b := <-w:
			return b
		case <-time.After(20 * time.Second):
			t.Fatal("no batch")
		}
		return lease.Batch{}
	}
	b := next()
	got := map[string]string{}
	for _, e := range b.Events {
		got[e.Key] = showEvent(e)
	}
	want := map[string]string{"good": "added 10.244.1.0-24 192.168.0.21", "bad": "error 10.244.3.0-24"}
	if !b.Snapshot || len(got) != 2 || got["good"] != want["good"] || got["bad"] != want["bad"] {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	// Heartbeats: kubelet's status updates change nothing for us.
	for i := range 3 {
		patch := `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"beat ` + string(rune('0'+i)) + `"}]}}`
		if _, err := srv.Admin.CoreV1().Nodes().PatchStatus(ctx, "good", []byte(patch)); err != nil {
			t.Fatal(err)
		}
	}
	// Fixing the bad node is an Added event; the heartbeats before it
	// would have come first.
	fix := `{"metadata":{"annotations":{"` + ann.PublicIP + `":"192.168.0.23"}}}`
	if _, err := srv.Admin.CoreV1().Nodes().Patch(ctx, "bad", types.MergePatchType, []byte(fix), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := next(); b.Snapshot || len(b.Events) != 1 || showEvent(b.Events[0]) != "added 10.244.3.0-24 192.168.0.23" {
		t.Fatalf("after heartbeats and a fix: %+v", b)
	}
	// Losing the managed annotation, or the node, removes the lease.
	unmanage := `{"metadata":{"annotations":{"` + ann.SubnetKubeManaged + `":null}}}`
	if _, err := srv.Admin.CoreV1().Nodes().Patch(ctx, "bad", types.MergePatchType, []byte(unmanage), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := next(); len(b.Events) != 1 || showEvent(b.Events[0]) != "removed 10.244.3.0-24" {
		t.Fatalf("after the annotation was removed: %+v", b)
	}
	if err := srv.Admin.CoreV1().Nodes().Delete(ctx, "good", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := next(); len(b.Events) != 1 || showEvent(b.Events[0]) != "removed 10.244.1.0-24" || b.Events[0].Lease.Revision <= 0 {
		t.Fatalf("after the node was deleted: %+v", b)
	}
}

func showEvent(e lease.Event) string {
	switch {
	case e.Err != nil:
		return "error " + e.Lease.Key()
	case e.Type == lease.Removed:
		return "removed " + e.Lease.Key()
	}
	return "added " + e.Lease.Key() + " " + e.Lease.Attrs.PublicIP.String()
}
