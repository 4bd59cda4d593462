package kubestore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/lease/kubestore/kubetest"
)

// testClientMatchesClientset holds NewClient to the clientset it replaces
// in flanneld: every API call, made through both as kube-flannel's service
// account against the same server, returns the same objects, the same
// errors (as apierrors classifies them) and the same watch events.
func testClientMatchesClientset(t *testing.T, srv *kubetest.Server) {
	resetNodes(t, srv.Admin)
	ctx := kubetest.Context(t, time.Minute)
	for i := range 3 {
		makeNode(t, srv.Admin, fmt.Sprintf("m%d", i), map[string]string{"example.com/n": fmt.Sprint(i)}, fmt.Sprintf("10.244.%d.0/24", i))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "parity", Namespace: "kube-flannel"},
		Spec:       corev1.PodSpec{NodeName: "m1", Containers: []corev1.Container{{Name: "c", Image: "weft"}}},
	}
	if _, err := srv.Admin.CoreV1().Pods("kube-flannel").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Admin.CoreV1().Pods("kube-flannel").Delete(context.Background(), "parity", metav1.DeleteOptions{})
	})
	// Lists and watches are decoded slim (slim.go), keeping the
	// annotations of one prefix: the clientset's nodes are compared
	// slimmed the same way.
	rc, err := NewClient(srv.ConfigAt(srv.URL, srv.FlannelToken), "example.com")
	if err != nil {
		t.Fatal(err)
	}
	cs := clientsetAPI{flannelClient(t, srv, srv.URL)}
	clients := []struct {
		name string
		api  API
	}{{"NewClient", rc}, {"clientset", cs}}

	// same runs call through both clients and compares what they return.
	same := func(what string, call func(API) (any, error)) {
		t.Helper()
		got, gerr := call(rc)
		want, werr := call(cs)
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s: NewClient and the clientset disagree (-clientset +NewClient):\n%s", what, d)
		}
		if errKind(gerr) != errKind(werr) {
			t.Errorf("%s: NewClient err = %v (%s), clientset err = %v (%s)", what, gerr, errKind(gerr), werr, errKind(werr))
		}
	}
	same("get node", func(c API) (any, error) { return c.GetNode(ctx, "m1") })
	same("get missing node", func(c API) (any, error) { return c.GetNode(ctx, "nope") })
	same("get pod", func(c API) (any, error) { return c.GetPod(ctx, "kube-flannel", "parity") })
	same("get missing pod", func(c API) (any, error) { return c.GetPod(ctx, "kube-flannel", "nope") })
	// Paged as the watch lists: the list options must reach the server
	// (a limit of 1 takes three pages, continued by token).
	same("list nodes by pages", func(c API) (any, error) {
		var items []corev1.Node
		pages := 0
		opts := metav1.ListOptions{Limit: 1, LabelSelector: testLabel}
		for {
			l, err := c.ListNodes(ctx, opts)
			if err != nil {
				return items, err
			}
			pages++
			for _, n := range l.Items {
				items = append(items, slimmed(n, "example.com/"))
			}
			if l.Continue == "" {
				return fmt.Sprintf("%d pages: %v", pages, items), nil
			}
			opts.Continue = l.Continue
		}
	})
	same("list with a bad selector", func(c API) (any, error) {
		_, err := c.ListNodes(ctx, metav1.ListOptions{LabelSelector: "a in (b"})
		return nil, err
	})
	same("patch status of a missing node", func(c API) (any, error) {
		return c.PatchNodeStatus(ctx, "nope", []byte(`{"metadata":{"annotations":{"example.com/p":"1"}}}`))
	})
	same("malformed patch", func(c API) (any, error) { return c.PatchNodeStatus(ctx, "m0", []byte(`{`)) })
	bad, err := NewClient(srv.Config("not-a-token"), "")
	if err != nil {
		t.Fatal(err)
	}
	badCS, err := kubernetes.NewForConfig(srv.Config("not-a-token"))
	if err != nil {
		t.Fatal(err)
	}
	if _, gerr := bad.GetNode(ctx, "m0"); errKind(gerr) != "Unauthorized" {
		t.Errorf("NewClient with a bad token: err = %v, want Unauthorized", gerr)
	} else if _, werr := (clientsetAPI{badCS}).GetNode(ctx, "m0"); errKind(werr) != errKind(gerr) {
		t.Errorf("bad token: NewClient err = %v, clientset err = %v", gerr, werr)
	}

	// A patch through each client returns the node as the other reads it
	// back: the annotation set and the condition merged in by type.
	for i, c := range clients {
		other := clients[1-i].api
		name := fmt.Sprintf("m%d", i)
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"example.com/by":%q}},"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}`, c.name)
		got, err := c.api.PatchNodeStatus(ctx, name, []byte(patch))
		if err != nil {
			t.Fatalf("%s: patch node status: %v", c.name, err)
		}
		if got.Annotations["example.com/by"] != c.name || got.Annotations["example.com/n"] != fmt.Sprint(i) ||
			len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Reason != "FlannelIsUp" {
			t.Errorf("%s: patched node: annotations %v, conditions %+v", c.name, got.Annotations, got.Status.Conditions)
		}
		back, err := other.GetNode(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(back, got); d != "" {
			t.Errorf("%s: patch returned a node other than the one stored (-stored +returned):\n%s", c.name, d)
		}
	}

	// Watches from the same resourceVersion see the same events, decoded
	// to *corev1.Node; from compacted history, both report 410 Gone.
	start, err := rc.ListNodes(ctx, metav1.ListOptions{LabelSelector: testLabel})
	if err != nil {
		t.Fatal(err)
	}
	opts := metav1.ListOptions{ResourceVersion: start.ResourceVersion, LabelSelector: testLabel, AllowWatchBookmarks: true}
	var watches []watch.Interface
	for _, c := range clients {
		w, err := c.api.WatchNodes(ctx, opts)
		if err != nil {
			t.Fatalf("%s: watch nodes: %v", c.name, err)
		}
		defer w.Stop()
		watches = append(watches, w)
	}
	if _, err := srv.Admin.CoreV1().Nodes().Patch(ctx, "m2", types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"example.com/n":"changed"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Admin.CoreV1().Nodes().Delete(ctx, "m2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var events [2][]watch.Event
	for i, w := range watches {
		events[i] = nextEvents(t, clients[i].name, w, 2)
	}
	for i, ev := range events[0] {
		n, ok := ev.Object.(*corev1.Node)
		if !ok || n.Name != "m2" {
			t.Errorf("NewClient watch event %d: %s %T, want m2 as a *corev1.Node", i, ev.Type, ev.Object)
		}
	}
	for i, ev := range events[1] {
		if n, ok := ev.Object.(*corev1.Node); ok {
			s := slimmed(*n, "example.com/")
			events[1][i].Object = &s
		}
	}
	if d := cmp.Diff(events[1], events[0]); d != "" {
		t.Errorf("watch events differ (-clientset +NewClient):\n%s", d)
	}
	if len(events[0]) == 2 && (events[0][0].Type != watch.Modified || events[0][1].Type != watch.Deleted) {
		t.Errorf("watch events %s, %s; want MODIFIED, DELETED", events[0][0].Type, events[0][1].Type)
	}

	compact(t, srv)
	for _, c := range clients {
		if err := watchGone(ctx, c.api, opts); !isGone(err) {
			t.Errorf("%s: watch from compacted history: err = %v, want 410 Gone", c.name, err)
		}
	}
}

// errKind is how the store tells errors apart: apierrors' reason.
func errKind(err error) string {
	if err == nil {
		return "nil"
	}
	return string(apierrors.ReasonForError(err))
}

// nextEvents returns the next n events from w other than bookmarks (which
// each stream gets on its own schedule).
func nextEvents(t *testing.T, name string, w watch.Interface, n int) []watch.Event {
	t.Helper()
	var evs []watch.Event
	timeout := time.After(20 * time.Second)
	for len(evs) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Errorf("%s: watch ended after %d events", name, len(evs))
				return evs
			}
			if ev.Type != watch.Bookmark {
				evs = append(evs, ev)
			}
		case <-timeout:
			t.Errorf("%s: %d watch events after 20s, want %d", name, len(evs), n)
			return evs
		}
	}
	return evs
}

// watchGone opens a watch that the server should refuse, and returns how
// it did: the open's error, or the first event's error.
func watchGone(ctx context.Context, c API, opts metav1.ListOptions) error {
	w, err := c.WatchNodes(ctx, opts)
	if err != nil {
		return err
	}
	defer w.Stop()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			return fmt.Errorf("watch ended without an event")
		}
		if ev.Type != watch.Error {
			return fmt.Errorf("first event %s, want ERROR", ev.Type)
		}
		return apierrors.FromObject(ev.Object)
	case <-time.After(20 * time.Second):
		return fmt.Errorf("no watch event after 20s")
	}
}
