package kubestore

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// slimmed is what the slim decoder should make of n: its name,
// resourceVersion, annotations under prefix and podCIDR(s).
func slimmed(n corev1.Node, prefix string) corev1.Node {
	out := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion}}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, prefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	out.Spec.PodCIDR, out.Spec.PodCIDRs = n.Spec.PodCIDR, n.Spec.PodCIDRs
	return out
}

// fullNode is a node with every part the slim decoder must skip.
func fullNode(name string) *corev1.Node {
	now := metav1.Now()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, UID: "u-" + "1", ResourceVersion: "4711", Generation: 3, CreationTimestamp: now,
			Labels: map[string]string{"kubernetes.io/hostname": name},
			Annotations: map[string]string{
				"flannel.alpha.coreos.com/backend-type":        "vxlan",
				"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0e:57:00:00:00:01"}`,
				"flannel.alpha.coreos.com/public-ip":           "100.64.0.1",
				"flannel.alpha.coreos.com/kube-subnet-manager": "true",
				"node.alpha.kubernetes.io/ttl":                 "0",
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate}},
			Finalizers:    []string{"x"},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/64"}, ProviderID: "p://x",
			Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Capacity:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8")},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "100.64.0.1"}},
			Images:     []corev1.ContainerImage{{Names: []string{"a@sha256:00", "a:1"}, SizeBytes: 1 << 20}},
		},
	}
}

// protobufCodec encodes as kube-apiserver does and decodes through
// newSlimNegotiator with prefix.
func protobufCodec(t *testing.T, prefix string) (runtime.Encoder, runtime.Decoder) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cf := serializer.NewCodecFactory(scheme).WithoutConversion()
	ns := newSlimNegotiator(cf, prefix)
	for _, info := range ns.SupportedMediaTypes() {
		if info.MediaType == runtime.ContentTypeProtobuf {
			return cf.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion),
				ns.DecoderToVersion(info.Serializer, corev1.SchemeGroupVersion)
		}
	}
	t.Fatal("no protobuf serializer")
	return nil, nil
}

// A watch event's Node and a list's Nodes decode to exactly their name,
// resourceVersion, flannel annotations and podCIDRs; a Node decoded into
// a *corev1.Node (GetNode) is whole.
func TestSlimDecode(t *testing.T) {
	const prefix = "flannel.alpha.coreos.com/"
	enc, dec := protobufCodec(t, prefix)
	n := fullNode("n1")
	b, err := runtime.Encode(enc, n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := runtime.Decode(dec, b)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(slimmed(*n, prefix), *got.(*corev1.Node)); d != "" {
		t.Errorf("watch event node (-want +got):\n%s", d)
	}
	whole := &corev1.Node{}
	if err := runtime.DecodeInto(dec, b, whole); err != nil {
		t.Fatal(err)
	}
	if len(whole.Status.Images) != 1 || len(whole.Annotations) != 5 {
		t.Errorf("GetNode's node was slimmed: %d images, annotations %v", len(whole.Status.Images), whole.Annotations)
	}

	l := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "tok"},
		Items: []corev1.Node{*fullNode("a"), *fullNode("b"), {ObjectMeta: metav1.ObjectMeta{Name: "bare"}}}}
	b, err = runtime.Encode(enc, l)
	if err != nil {
		t.Fatal(err)
	}
	gotList := &corev1.NodeList{}
	if err := runtime.DecodeInto(dec, b, gotList); err != nil {
		t.Fatal(err)
	}
	want := corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "tok"}}
	for _, n := range l.Items {
		want.Items = append(want.Items, slimmed(n, prefix))
	}
	if d := cmp.Diff(want, *gotList); d != "" {
		t.Errorf("node list (-want +got):\n%s", d)
	}
}

// Bad bytes from the server are an error, never a panic: every truncation
// of a valid message, and every single-byte corruption of it.
func TestSlimDecodeMalformed(t *testing.T) {
	enc, dec := protobufCodec(t, "flannel.alpha.coreos.com/")
	b, err := runtime.Encode(enc, &corev1.NodeList{Items: []corev1.Node{*fullNode("a")}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		_ = runtime.DecodeInto(dec, b[:i], &corev1.NodeList{})
		_, _ = runtime.Decode(dec, b[:i])
		c := append([]byte(nil), b...)
		c[i] ^= 0xff
		_ = runtime.DecodeInto(dec, c, &corev1.NodeList{})
		_, _ = runtime.Decode(dec, c)
	}
	if _, err := runtime.Decode(dec, append(append([]byte(nil), b[:len(b)-3]...), 0x0a, 0xff)); err == nil {
		t.Error("a truncated node list decoded without error")
	}
}

// FuzzSlimDecode: any bytes as a watch event's object or a list: no
// panic, and whenever the full protobuf decoder accepts them too, the slim
// result is exactly the full result slimmed.
func FuzzSlimDecode(f *testing.F) {
	const prefix = "flannel.alpha.coreos.com/"
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		f.Fatal(err)
	}
	cf := serializer.NewCodecFactory(scheme).WithoutConversion()
	var full runtime.Serializer
	for _, info := range cf.SupportedMediaTypes() {
		if info.MediaType == runtime.ContentTypeProtobuf {
			full = info.Serializer
		}
	}
	ns := newSlimNegotiator(cf, prefix)
	var slim runtime.Decoder
	for _, info := range ns.SupportedMediaTypes() {
		if info.MediaType == runtime.ContentTypeProtobuf {
			slim = info.Serializer
		}
	}
	enc := cf.EncoderForVersion(full, corev1.SchemeGroupVersion)
	for _, obj := range []runtime.Object{fullNode("a"), &corev1.NodeList{Items: []corev1.Node{*fullNode("b")}}} {
		b, err := runtime.Encode(enc, obj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _, serr := slim.Decode(b, nil, nil)
		want, _, ferr := full.Decode(b, nil, nil)
		if serr == nil && ferr == nil {
			if n, ok := want.(*corev1.Node); ok {
				g := *got.(*corev1.Node)
				g.TypeMeta, n.TypeMeta = metav1.TypeMeta{}, metav1.TypeMeta{} // cleared by the client (WithoutVersionDecoder) either way
				if d := cmp.Diff(slimmed(*n, prefix), g); d != "" && !cmp.Equal(*n, g) {
					t.Errorf("slim node differs (-full slimmed +slim):\n%s", d)
				}
			}
		}
		gotList := &corev1.NodeList{}
		_, _, serr = slim.Decode(b, nil, gotList)
		wantList := &corev1.NodeList{}
		_, _, ferr = full.Decode(b, nil, wantList)
		if serr == nil && ferr == nil {
			w := corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: wantList.ResourceVersion, Continue: wantList.Continue}}
			for _, n := range wantList.Items {
				w.Items = append(w.Items, slimmed(n, prefix))
			}
			if len(w.Items) == 0 {
				w.Items = gotList.Items[:0:0]
				if gotList.Items == nil {
					w.Items = nil
				}
			}
			gotList.TypeMeta, wantList.TypeMeta = metav1.TypeMeta{}, metav1.TypeMeta{} // as above
			// What is not a v1 NodeList by its envelope is decoded whole.
			if d := cmp.Diff(w, *gotList); d != "" && !cmp.Equal(*wantList, *gotList) {
				t.Errorf("slim list differs (-full slimmed +slim):\n%s", d)
			}
		}
	})
}
