package kubestore

import (
	"bytes"
	"errors"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Slim decoding. Every node agent lists and watches every Node, and a
// Node is kilobytes (status: conditions, addresses, capacity, images;
// managedFields), rewritten by its kubelet every few seconds; the store
// uses a few hundred bytes of it. So the lists and watch events, which
// kube-apiserver sends as protobuf, are not decoded into whole
// corev1.Nodes: slimDecoder walks the protobuf wire format and keeps the
// name, the resourceVersion, the annotations under flannel's prefix and
// spec.podCIDR(s), skipping everything else (status whole) without
// allocating for it. Single reads (GetNode: this node's addresses and
// annotations) and anything not protobuf are decoded fully, as before.

// protoMagic starts every Kubernetes protobuf message (a runtime.Unknown
// envelope).
var protoMagic = []byte("k8s\x00")

// slimNegotiator is a NegotiatedSerializer whose protobuf decoder is a
// slimDecoder.
type slimNegotiator struct {
	runtime.NegotiatedSerializer
	infos []runtime.SerializerInfo
}

func newSlimNegotiator(ns runtime.NegotiatedSerializer, keep string) slimNegotiator {
	infos := append([]runtime.SerializerInfo(nil), ns.SupportedMediaTypes()...)
	for i := range infos {
		if infos[i].MediaType == runtime.ContentTypeProtobuf {
			infos[i].Serializer = slimDecoder{Serializer: infos[i].Serializer, prefix: keep}
		}
	}
	return slimNegotiator{NegotiatedSerializer: ns, infos: infos}
}

func (s slimNegotiator) SupportedMediaTypes() []runtime.SerializerInfo { return s.infos }

// slimDecoder decodes Node messages that arrive without a target (watch
// events) and NodeList messages (lists) slim; everything else as the
// protobuf serializer it wraps does. prefix selects the annotations kept
// (all when empty).
type slimDecoder struct {
	runtime.Serializer
	prefix string
}

var (
	nodeGVK     = corev1.SchemeGroupVersion.WithKind("Node")
	nodeListGVK = corev1.SchemeGroupVersion.WithKind("NodeList")
)

func (d slimDecoder) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	list, isList := into.(*corev1.NodeList)
	if (into != nil && !isList) || !bytes.HasPrefix(data, protoMagic) {
		return d.Serializer.Decode(data, defaults, into)
	}
	apiVersion, kind, raw, ok := unknown(data[len(protoMagic):])
	if !ok || apiVersion != "v1" {
		return d.Serializer.Decode(data, defaults, into)
	}
	switch {
	case kind == "Node" && into == nil:
		n := &corev1.Node{}
		if err := d.node(raw, n); err != nil {
			return nil, nil, err
		}
		return n, &nodeGVK, nil
	case kind == "NodeList":
		if list == nil {
			list = &corev1.NodeList{}
		}
		*list = corev1.NodeList{}
		if err := d.nodeList(raw, list); err != nil {
			return nil, nil, err
		}
		return list, &nodeListGVK, nil
	}
	return d.Serializer.Decode(data, defaults, into)
}

// unknown reads the runtime.Unknown envelope: its type and its raw
// message (plain protobuf: no content encoding).
func unknown(b []byte) (apiVersion, kind string, raw []byte, ok bool) {
	ok = true
	err := fields(b, func(num int, v []byte, _ uint64) error {
		switch num {
		case 1: // typeMeta
			return fields(v, func(num int, v []byte, _ uint64) error {
				switch num {
				case 1:
					apiVersion = string(v)
				case 2:
					kind = string(v)
				}
				return nil
			})
		case 2: // raw
			raw = v
		case 3, 4: // contentEncoding, contentType
			if len(v) > 0 {
				ok = false
			}
		}
		return nil
	})
	return apiVersion, kind, raw, ok && err == nil
}

// nodeList keeps the list's resourceVersion and continue token and each
// item slim.
func (d slimDecoder) nodeList(b []byte, l *corev1.NodeList) error {
	n := 0
	if err := fields(b, func(num int, v []byte, _ uint64) error {
		if num == 2 {
			n++
		}
		return nil
	}); err != nil {
		return err
	}
	l.Items = make([]corev1.Node, 0, n)
	return fields(b, func(num int, v []byte, _ uint64) error {
		switch num {
		case 1: // metadata (ListMeta)
			return fields(v, func(num int, v []byte, _ uint64) error {
				switch num {
				case 2:
					l.ResourceVersion = string(v)
				case 3:
					l.Continue = string(v)
				}
				return nil
			})
		case 2: // items
			l.Items = append(l.Items, corev1.Node{})
			return d.node(v, &l.Items[len(l.Items)-1])
		}
		return nil
	})
}

// node fills n with a Node message's name, resourceVersion, kept
// annotations and podCIDR(s).
func (d slimDecoder) node(b []byte, n *corev1.Node) error {
	return fields(b, func(num int, v []byte, _ uint64) error {
		switch num {
		case 1: // metadata (ObjectMeta)
			return fields(v, func(num int, v []byte, _ uint64) error {
				switch num {
				case 1:
					n.Name = string(v)
				case 6:
					n.ResourceVersion = string(v)
				case 12: // an annotations entry
					var key, val []byte
					if err := fields(v, func(num int, v []byte, _ uint64) error {
						switch num {
						case 1:
							key = v
						case 2:
							val = v
						}
						return nil
					}); err != nil {
						return err
					}
					if !bytes.HasPrefix(key, []byte(d.prefix)) {
						return nil
					}
					if n.Annotations == nil {
						n.Annotations = make(map[string]string, 4)
					}
					n.Annotations[string(key)] = string(val)
				}
				return nil
			})
		case 2: // spec
			return fields(v, func(num int, v []byte, _ uint64) error {
				switch num {
				case 1:
					n.Spec.PodCIDR = string(v)
				case 7:
					n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, string(v))
				}
				return nil
			})
		}
		return nil // status and anything newer: skipped
	})
}

var errProto = errors.New("malformed protobuf in API response")

// fields calls fn for each field of a protobuf message: its number and,
// for a length-delimited field, its bytes (aliasing b), for a varint its
// value. Fixed-size fields are skipped; groups are refused.
func fields(b []byte, fn func(num int, v []byte, x uint64) error) error {
	for len(b) > 0 {
		tag, n := uvarint(b)
		if n <= 0 {
			return errProto
		}
		b = b[n:]
		num, typ := int(tag>>3), tag&7
		switch typ {
		case 0: // varint
			x, n := uvarint(b)
			if n <= 0 {
				return errProto
			}
			b = b[n:]
			if err := fn(num, nil, x); err != nil {
				return err
			}
		case 1: // 64-bit
			if len(b) < 8 {
				return errProto
			}
			b = b[8:]
		case 2: // length-delimited
			l, n := uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return errProto
			}
			v := b[n : n+int(l)]
			b = b[n+int(l):]
			if err := fn(num, v, 0); err != nil {
				return err
			}
		case 5: // 32-bit
			if len(b) < 4 {
				return errProto
			}
			b = b[4:]
		default:
			return errProto
		}
	}
	return nil
}

// uvarint decodes a protobuf varint; n ≤ 0 when b holds none.
func uvarint(b []byte) (x uint64, n int) {
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, i + 1
		}
	}
	return 0, 0
}
