package kubestore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/weft-net/weft/internal/lease"
)

// Unit tests on client-go's fake clientset: the request shapes and the
// watch's error paths, which a real server produces only with effort. The
// behaviour against a real server is in kube_test.go.

func TestNewAnnotations(t *testing.T) {
	for _, c := range []struct{ prefix, managed, err string }{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/kube-subnet-manager", ""},
		{"example.com/", "example.com/kube-subnet-manager", ""},
		{"example.com/net", "example.com/net-kube-subnet-manager", ""},
		{"example.com/net-", "example.com/net-kube-subnet-manager", ""},
		{"a.b/c/d", "", "at most one '/'"},
		{"Example.com", "", "DNS name"},
		{"localhost", "", "DNS name"},
	} {
		a, err := NewAnnotations(c.prefix)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("NewAnnotations(%q) err = %v, want %q", c.prefix, err, c.err)
			}
			continue
		}
		if err != nil || a.SubnetKubeManaged != c.managed {
			t.Errorf("NewAnnotations(%q) = %q, %v; want %q", c.prefix, a.SubnetKubeManaged, err, c.managed)
		}
	}
}

func node(name, rv string, ann map[string]string, cidrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv, Annotations: ann},
		Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	return n
}

func TestDecode(t *testing.T) {
	a := mustAnnotations(t, prefix)
	base := func(kv ...string) map[string]string {
		m := map[string]string{a.SubnetKubeManaged: "true", a.BackendType: "vxlan",
			a.PublicIP: "192.168.0.1", a.BackendData: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}`}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	v4 := families{known: true, ipv4: true}
	dual := families{known: true, ipv4: true, ipv6: true}
	for _, c := range []struct {
		name string
		n    *corev1.Node
		fam  families
		want string // lease key and public IPs, "error …", or "unmanaged"
	}{
		{"v4", node("n", "7", base(), "10.244.1.0/24"), v4, "10.244.1.0-24 192.168.0.1 invalid IP"},
		{"old podCIDR only", &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: base()}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24"}}, v4, "10.244.1.0-24 192.168.0.1 invalid IP"},
		{"unmanaged", node("n", "7", nil, "10.244.1.0/24"), v4, "unmanaged"},
		{"managed false", node("n", "7", base(a.SubnetKubeManaged, "false"), "10.244.1.0/24"), v4, "unmanaged"},
		{"v6 half ignored when v4-only", node("n", "7", base(a.PublicIPv6, "fd00::1"), "10.244.1.0/24", "fd00:1::/64"), v4, "10.244.1.0-24 192.168.0.1 invalid IP"},
		{"dual", node("n", "7", base(a.PublicIPv6, "fd00::1", a.BackendV6Data, `{"VNI":1}`), "10.244.1.0/24", "fd00:1::/64"), dual, "10.244.1.0-24&fd00:1::-64 192.168.0.1 fd00::1"},
		{"dual wanted, v4 only", node("n", "7", base(), "10.244.1.0/24"), dual, "error"},
		{"unknown families take what is published", node("n", "7", base(a.PublicIPv6, "fd00::1"), "10.244.1.0/24", "fd00:1::/64"), families{}, "10.244.1.0-24&fd00:1::-64 192.168.0.1 fd00::1"},
		{"bad public IP", node("n", "7", base(a.PublicIP, "nope"), "10.244.1.0/24"), v4, "error"},
		{"v6 public IP for v4", node("n", "7", base(a.PublicIP, "fd00::1"), "10.244.1.0/24"), v4, "error"},
		{"bad backend data", node("n", "7", base(a.BackendData, "{"), "10.244.1.0/24"), v4, "error"},
		{"host-gw null data", node("n", "7", base(a.BackendData, "null", a.BackendType, "host-gw"), "10.244.1.0/24"), v4, "10.244.1.0-24 192.168.0.1 invalid IP"},
		{"no podCIDR", node("n", "7", base()), v4, "error"},
		{"bad podCIDR", node("n", "7", base(), "10.244.1.0"), v4, "error"},
		{"three podCIDRs", node("n", "7", base(), "10.244.1.0/24", "fd00:1::/64", "10.245.1.0/24"), v4, "error"},
	} {
		e, err := a.decode(c.n, c.fam)
		var got string
		switch {
		case errors.Is(err, errNotManaged):
			got = "unmanaged"
		case e.err != nil:
			got = "error"
		default:
			got = e.lease.Key() + " " + e.lease.Attrs.PublicIP.String() + " " + e.lease.Attrs.PublicIPv6.String()
		}
		if got != c.want {
			t.Errorf("%s: decode = %q (%v), want %q", c.name, got, e.err, c.want)
		}
		if e.err == nil && err == nil && e.lease.Revision != 7 && c.n.ResourceVersion == "7" {
			t.Errorf("%s: revision %d, want 7", c.name, e.lease.Revision)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("10.244.1.0/24", "fd00::/64", "192.168.0.1", "fd00::1", `{"VNI":1}`, "null")
	f.Add("", "garbage", "", "::ffff:1.2.3.4", "{", "")
	a, err := NewAnnotations(prefix)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, c1, c2, ip4, ip6, d4, d6 string) {
		n := node("n", "1", map[string]string{a.SubnetKubeManaged: "true", a.PublicIP: ip4, a.PublicIPv6: ip6,
			a.BackendData: d4, a.BackendV6Data: d6}, c1, c2)
		for _, fam := range []families{{}, {known: true, ipv4: true}, {known: true, ipv6: true}, {known: true, ipv4: true, ipv6: true}} {
			e, err := a.decode(n, fam)
			if err != nil || e.err != nil {
				continue
			}
			// A decoded lease is usable: a key that parses back, and
			// addresses of the right family.
			if v4, v6, err := lease.ParseKey(e.lease.Key()); err != nil || v4 != e.lease.Subnet || v6 != e.lease.IPv6Subnet {
				t.Fatalf("key %q of %+v does not parse back: %v", e.lease.Key(), e.lease, err)
			}
			if e.lease.Subnet.IsValid() != e.lease.Attrs.PublicIP.IsValid() || e.lease.IPv6Subnet.IsValid() != e.lease.Attrs.PublicIPv6.IsValid() {
				t.Fatalf("subnets and public IPs disagree: %+v", e.lease)
			}
			// The annotations this store would publish for that lease
			// decode to it again.
			pub := families{known: true, ipv4: e.lease.Subnet.IsValid(), ipv6: e.lease.IPv6Subnet.IsValid()}
			ann := (&Store{ann: a}).wantAnnotations(nil, e.lease.Attrs, pub)
			back, err := a.decode(node("n", "1", ann, c1, c2), pub)
			if err != nil || back.err != nil || back.lease.ID() != e.lease.ID() || !back.lease.Attrs.Equal(e.lease.Attrs) {
				t.Fatalf("lease %+v, published as %v, decodes to %+v (%v, %v)", e.lease, ann, back.lease, err, back.err)
			}
		}
	})
}

func fakeStore(t *testing.T, c *fake.Clientset, name string) *Store {
	t.Helper()
	s, err := New(discard(), Config{Client: clientsetAPI{c}, NodeName: name, AnnotationPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAcquireWritesThroughNodeStatus(t *testing.T) {
	c := fake.NewClientset(node("n1", "", nil, "10.244.1.0/24"))
	s := fakeStore(t, c, "n1")
	req := lease.Request{Network: network(t, `{"Network":"10.244.0.0/16"}`), Attrs: vxlanAttrs("192.168.0.1", "aa:bb:cc:dd:ee:01")}
	if _, err := s.Acquire(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var verbs []string
	for _, a := range c.Actions() {
		v := a.GetVerb() + " " + a.GetResource().Resource
		if a.GetSubresource() != "" {
			v += "/" + a.GetSubresource()
		}
		if p, ok := a.(k8stesting.PatchAction); ok {
			v += " " + string(p.GetPatchType())
		}
		verbs = append(verbs, v)
	}
	// The one write is a strategic merge patch of nodes/status, the verb
	// kube-flannel's ClusterRole grants; a second Acquire only reads.
	if got := strings.Join(verbs, ", "); got != "get nodes, patch nodes/status "+string(types.StrategicMergePatchType) {
		t.Errorf("requests: %s", got)
	}
	c.ClearActions()
	if _, err := s.Acquire(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Actions()); n != 1 {
		t.Errorf("unchanged re-acquire made %d requests, want 1 (get)", n)
	}
}

// fakeWatches hands out watchers the test controls and records the
// resourceVersion each watch asked for.
type fakeWatches struct {
	ch  chan *watch.FakeWatcher
	rvs chan string
}

func newFakeWatches(c *fake.Clientset) *fakeWatches {
	fw := &fakeWatches{ch: make(chan *watch.FakeWatcher, 8), rvs: make(chan string, 8)}
	c.PrependWatchReactor("nodes", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w := watch.NewFakeWithChanSize(16, false)
		fw.rvs <- a.(k8stesting.WatchActionImpl).WatchRestrictions.ResourceVersion
		fw.ch <- w
		return true, w, nil
	})
	return fw
}

func (fw *fakeWatches) next(t *testing.T) (*watch.FakeWatcher, string) {
	t.Helper()
	select {
	case w := <-fw.ch:
		return w, <-fw.rvs
	case <-time.After(10 * time.Second):
		t.Fatal("no watch opened")
	}
	return nil, ""
}

func TestWatchResumesAndRelists(t *testing.T) {
	a := mustAnnotations(t, prefix)
	managed := func(ip string) map[string]string {
		return map[string]string{a.SubnetKubeManaged: "true", a.BackendType: "vxlan", a.PublicIP: ip, a.BackendData: `{"VNI":1}`}
	}
	c := fake.NewClientset(node("n1", "", managed("192.168.0.1"), "10.244.1.0/24"))
	c.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return false, nil, nil // the tracker answers; it sets no list resourceVersion
	})
	fw := newFakeWatches(c)
	s := fakeStore(t, c, "n1")
	out := make(chan lease.Batch)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, out) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch = %v", err)
		}
	}()
	recv := func() lease.Batch {
		t.Helper()
		select {
		case b := <-out:
			return b
		case <-time.After(10 * time.Second):
			t.Fatal("no batch")
		}
		return lease.Batch{}
	}
	if b := recv(); !b.Snapshot || len(b.Events) != 1 {
		t.Fatalf("first batch %+v, want a Snapshot of n1", b)
	}
	w, _ := fw.next(t)
	w.Add(node("n2", "11", managed("192.168.0.2"), "10.244.2.0/24"))
	w.Modify(node("n1", "12", managed("192.168.0.1"), "10.244.1.0/24")) // heartbeat: no event
	w.Modify(node("n2", "13", managed("192.168.0.22"), "10.244.2.0/24"))
	var got []string
	for len(got) < 2 {
		b := recv()
		if b.Snapshot {
			t.Fatalf("unexpected Snapshot")
		}
		for _, e := range b.Events {
			got = append(got, showEvent(e))
		}
	}
	if strings.Join(got, ",") != "added 10.244.2.0-24 192.168.0.2,added 10.244.2.0-24 192.168.0.22" {
		t.Errorf("events %q", got)
	}
	// The server ends the watch: resume from the last resourceVersion
	// seen, no Snapshot.
	w.Stop()
	w, rv := fw.next(t)
	if rv != "13" {
		t.Errorf("resumed from %q, want 13", rv)
	}
	w.Delete(node("n2", "14", managed("192.168.0.22"), "10.244.2.0/24"))
	if b := recv(); b.Snapshot || len(b.Events) != 1 || showEvent(b.Events[0]) != "removed 10.244.2.0-24" || b.Revision != 14 {
		t.Fatalf("after resume: %+v", b)
	}
	// History compacted: 410 Gone, then a full list and a Snapshot.
	gone := apierrors.NewResourceExpired("too old resource version: 14 (20)")
	w.Error(&gone.ErrStatus)
	if b := recv(); !b.Snapshot || len(b.Events) != 1 || b.Events[0].Key != "n1" {
		t.Fatalf("after 410: %+v, want a Snapshot of n1", b)
	}
	_, _ = fw.next(t)
}

func TestWatchListFailureRetries(t *testing.T) {
	c := fake.NewClientset()
	fails := 2
	c.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if fails > 0 {
			fails--
			return true, nil, apierrors.NewServiceUnavailable("starting")
		}
		return false, nil, nil
	})
	newFakeWatches(c)
	s := fakeStore(t, c, "n1")
	out := make(chan lease.Batch)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go s.Watch(ctx, out)
	select {
	case b := <-out:
		if !b.Snapshot {
			t.Errorf("first batch is not a Snapshot")
		}
		if !s.WatchDownSince().IsZero() {
			t.Errorf("watch still reported down after a successful list")
		}
	case <-ctx.Done():
		t.Fatal("no snapshot after list failures")
	}
}

func TestNodeNameErrors(t *testing.T) {
	c := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}})
	env := map[string]string{"POD_NAME": "p", "POD_NAMESPACE": "ns"}
	if _, err := NodeName(context.Background(), clientsetAPI{c}, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "not scheduled") {
		t.Errorf("unscheduled pod: err = %v", err)
	}
	env["POD_NAME"] = "missing"
	if _, err := NodeName(context.Background(), clientsetAPI{c}, func(k string) string { return env[k] }); !apierrors.IsNotFound(err) {
		t.Errorf("missing pod: err = %v", err)
	}
}
