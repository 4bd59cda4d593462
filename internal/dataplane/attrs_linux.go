package dataplane

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Decoding the kernel's messages without trusting their lengths. The
// kernel's messages are well formed, but the library's decoders
// (nl.ParseRouteAttr, and the Link and Neigh deserializers built on it)
// slice past the end of a last attribute whose padding is missing: a
// message the fuzzer makes in a second (FuzzNotification) panics them. On
// the subscription's goroutine such a panic would take the daemon down,
// so our own parsers use parseAttrs, and the library's decoders are
// called through decodeSafely.

// rtAttr is one route attribute (struct rtattr and its value).
type rtAttr struct {
	typ uint16
	val []byte
}

// parseAttrs splits b into attributes, each a 4-byte header (length,
// type) and a value padded to 4 bytes. It reports false, and returns what
// it read so far, at an attribute whose length is shorter than its header
// or longer than what is left; the padding of the last one may be absent.
func parseAttrs(b []byte) ([]rtAttr, bool) {
	var out []rtAttr
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return out, false
		}
		out = append(out, rtAttr{typ: binary.NativeEndian.Uint16(b[2:4]), val: b[unix.SizeofRtAttr:l]})
		b = b[min(rtaAlign(l), len(b)):]
	}
	return out, true
}

func rtaAlign(l int) int { return (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }

// decodeSafely calls a library decoder, turning a panic into an error.
func decodeSafely[T any](f func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed netlink message: %v", r)
		}
	}()
	return f()
}
