// Package lease defines a host's subnet lease, its wire formats (the etcd
// key and the lease JSON of upstream flannel) and the Store interface that
// the daemon consumes. Implementations live in sub-packages (etcdstore, and
// the in-memory Fake here); all of them pass the suite in leasetest.
//
// A lease carries an IPv4 subnet, an IPv6 subnet, or both: dual-stack is in
// the data model from the start so nothing downstream is written twice.
package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Lease is one host's subnet lease, as plain data.
type Lease struct {
	// Subnet is the IPv4 subnet; invalid (zero) when the lease is IPv6-only.
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 subnet; invalid when the lease is IPv4-only.
	IPv6Subnet netip.Prefix
	Attrs      Attrs
	// Expiration is when the lease runs out. Only known for leases this
	// host wrote (peers' expiry would cost a round trip per key); zero for
	// reservations, which never expire.
	Expiration time.Time
	// Reservation is true for a key with no TTL: it never expires and is
	// never handed to another host.
	Reservation bool
	// Revision is the store revision at which the lease was last written
	// (etcd's ModRevision); compare-and-swap writes are conditioned on it.
	Revision int64
}

// Key returns the lease's store key in upstream's format:
// "10.5.52.0-24", "10.5.52.0-24&fc00::-64", or "0.0.0.0-0&fc00::-64" when
// IPv6-only (upstream's key always starts with an IPv4 part).
func (l Lease) Key() string { return MakeKey(l.Subnet, l.IPv6Subnet) }

// ID identifies a lease by its subnets; the daemon indexes peers by it.
type ID struct{ V4, V6 netip.Prefix }

// ID returns the subnets that identify l.
func (l Lease) ID() ID { return ID{l.Subnet, l.IPv6Subnet} }

func (id ID) String() string { return MakeKey(id.V4, id.V6) }

// CompareID orders lease IDs by their v4 subnet, then their v6 subnet
// (address, then prefix length): the order of their store keys, and the
// order in which conflicting peers win (the smaller first).
func CompareID(a, b ID) int {
	if c := comparePrefix(a.V4, b.V4); c != 0 {
		return c
	}
	return comparePrefix(a.V6, b.V6)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// MakeKey formats subnets as a store key (see Lease.Key).
func MakeKey(v4, v6 netip.Prefix) string {
	var b strings.Builder
	if v4.IsValid() {
		b.WriteString(v4.Addr().String())
		b.WriteByte('-')
		b.WriteString(strconv.Itoa(v4.Bits()))
	} else {
		b.WriteString("0.0.0.0-0")
	}
	if v6.IsValid() {
		b.WriteByte('&')
		b.WriteString(v6.Addr().String())
		b.WriteByte('-')
		b.WriteString(strconv.Itoa(v6.Bits()))
	}
	return b.String()
}

// ErrBadKey is returned (wrapped) by ParseKey.
var ErrBadKey = errors.New("malformed subnet key")

// ParseKey parses the last element of a store key into its subnets. The
// IPv4 part "0.0.0.0-0" stands for "no IPv4 subnet". Subnets must be in
// canonical (masked) form.
func ParseKey(key string) (v4, v6 netip.Prefix, err error) {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		key = key[i+1:]
	}
	// The longest real key, "255.255.255.255-32&" and a full IPv6
	// address with "-128", is 62 bytes. The parsers' errors repeat their
	// input, so a longer one is refused before it reaches them.
	if len(key) > maxKeyLen {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: longer than %d bytes", ErrBadKey, Shorten(key), maxKeyLen)
	}
	s4, s6, dual := strings.Cut(key, "&")
	v4, err = parseKeyPrefix(s4, true)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: %v", ErrBadKey, Shorten(key), err)
	}
	if v4.Bits() == 0 && v4.Addr().IsUnspecified() {
		v4 = netip.Prefix{}
	}
	if dual {
		v6, err = parseKeyPrefix(s6, false)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: %v", ErrBadKey, Shorten(key), err)
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w %q: no subnet", ErrBadKey, Shorten(key))
	}
	return v4, v6, nil
}

// maxKeyLen bounds the key ParseKey reads.
const maxKeyLen = 96

// maxShown is how much of a malformed key errors and logs repeat.
const maxShown = 128

// Shorten returns s, or its first bytes and its length when it is long:
// a malformed key can be as large as the store allows, and repeating it
// whole in every error and log line would let junk in the store fill the
// logs.
func Shorten(s string) string {
	if len(s) <= maxShown {
		return s
	}
	cut := maxShown
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

func parseKeyPrefix(s string, v4 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, errors.New("no '-' before the prefix length")
	}
	a, err := netip.ParseAddr(s[:i])
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Is4() != v4 || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%s: wrong address family", a)
	}
	bits, err := strconv.Atoi(s[i+1:])
	if err != nil || strconv.Itoa(bits) != s[i+1:] {
		return netip.Prefix{}, fmt.Errorf("bad prefix length %q", s[i+1:])
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr() != a {
		return netip.Prefix{}, fmt.Errorf("%s/%d is not a subnet boundary", a, bits)
	}
	return p, nil
}

// Attrs are the lease attributes a host publishes, encoded as upstream's
// lease JSON: {"PublicIP":"…","PublicIPv6":null,"BackendType":"vxlan",
// "BackendData":{…},"BackendV6Data":{…}}.
type Attrs struct {
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

type wireAttrs struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

// MarshalJSON writes upstream's format: PublicIP is always a string
// ("0.0.0.0" when the host has no IPv4), PublicIPv6 is null when unset.
func (a Attrs) MarshalJSON() ([]byte, error) {
	w := wireAttrs{
		PublicIP:      "0.0.0.0",
		BackendType:   a.BackendType,
		BackendData:   a.BackendData,
		BackendV6Data: a.BackendV6Data,
	}
	if a.PublicIP.IsValid() {
		w.PublicIP = a.PublicIP.String()
	}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		w.PublicIPv6 = &s
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads upstream's lease JSON. It never panics; addresses
// must parse and be of the right family.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	var w wireAttrs
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	return a.fromWire(w)
}

// fromWire checks and converts the decoded wire form.
func (a *Attrs) fromWire(w wireAttrs) error {
	var out Attrs
	if w.PublicIP != "" {
		ip, err := netip.ParseAddr(w.PublicIP)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("PublicIP %q is not an IPv4 address", Shorten(w.PublicIP))
		}
		if !ip.IsUnspecified() {
			out.PublicIP = ip
		}
	}
	if w.PublicIPv6 != nil && *w.PublicIPv6 != "" {
		ip, err := netip.ParseAddr(*w.PublicIPv6)
		if err != nil || !ip.Is6() || ip.Is4In6() {
			return fmt.Errorf("PublicIPv6 %q is not an IPv6 address", Shorten(*w.PublicIPv6))
		}
		out.PublicIPv6 = ip
	}
	out.BackendType = w.BackendType
	if len(w.BackendData) > 0 && !bytes.Equal(w.BackendData, []byte("null")) {
		out.BackendData = w.BackendData
	}
	if len(w.BackendV6Data) > 0 && !bytes.Equal(w.BackendV6Data, []byte("null")) {
		out.BackendV6Data = w.BackendV6Data
	}
	*a = out
	return nil
}

// Equal reports whether two attribute sets are the same (backend data is
// compared as JSON values, ignoring formatting).
func (a Attrs) Equal(b Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 &&
		a.BackendType == b.BackendType &&
		jsonEqual(a.BackendData, b.BackendData) && jsonEqual(a.BackendV6Data, b.BackendV6Data)
}

func jsonEqual(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return false
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

// MaxValueSize bounds a lease value Decode reads. Upstream's leases are a
// few hundred bytes (a public IP or two, a MAC or a public key); anything
// near this size is junk, refused before it is parsed (etcd itself takes
// values up to its 1.5 MiB request limit).
const MaxValueSize = 64 << 10

// ErrValueTooLarge is returned (wrapped) by Decode for a value above
// MaxValueSize.
var ErrValueTooLarge = errors.New("lease value too large")

// Decode builds a lease from a store key and value. It returns an error,
// never panics, on anything malformed; the subnets parsed from the key are
// returned even when the value is bad so the caller can drop that peer.
func Decode(key string, value []byte) (Lease, error) {
	v4, v6, err := ParseKey(key)
	if err != nil {
		return Lease{}, err
	}
	l := Lease{Subnet: v4, IPv6Subnet: v6}
	if len(value) > MaxValueSize {
		return l, fmt.Errorf("lease %s: %w: %d bytes (at most %d)", l.Key(), ErrValueTooLarge, len(value), MaxValueSize)
	}
	// Into the wire form directly, not through Attrs.UnmarshalJSON:
	// encoding/json would scan the value once to validate it before the
	// method, and the method scan it again (a start at 5,000 leases
	// decodes them all).
	var w wireAttrs
	err = json.Unmarshal(value, &w)
	if err == nil {
		err = l.Attrs.fromWire(w)
	}
	if err != nil {
		return l, fmt.Errorf("lease %s: bad value: %w", l.Key(), err)
	}
	return l, nil
}
