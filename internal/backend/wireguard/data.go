package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Data is the lease's BackendData / BackendV6Data for wireguard, in
// upstream's JSON shape: {"PublicKey":"<base64>","Port":51820}.
type Data struct {
	PublicKey string
	// Port is the peer's listen port for that family; 0 (or absent, as
	// older flannel versions wrote it) means "the same as ours".
	Port uint16
}

// EncodeData renders wireguard backend data.
func EncodeData(pub dataplane.WGKey, port uint16) json.RawMessage {
	b, _ := json.Marshal(Data{PublicKey: pub.String(), Port: port}) // cannot fail
	return b
}

// DecodeData parses wireguard backend data. The key must be a valid,
// non-zero WireGuard public key; the returned PublicKey is its canonical
// base64 form. A port that is not a 16-bit unsigned number is refused by
// the decoder; 0 is returned as it is (the caller's fallback).
func DecodeData(raw json.RawMessage) (Data, error) {
	d, _, err := decodeData(raw)
	return d, err
}

// decodeData is DecodeData returning the parsed key too, so a peer's key
// is parsed once per lease event.
func decodeData(raw json.RawMessage) (Data, dataplane.WGKey, error) {
	var d Data
	if len(raw) == 0 {
		return d, dataplane.WGKey{}, errors.New("missing backend data")
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return Data{}, dataplane.WGKey{}, fmt.Errorf("bad backend data: %w", err)
	}
	if d.PublicKey == "" {
		return d, dataplane.WGKey{}, errors.New("backend data has no PublicKey")
	}
	k, err := wgtypes.ParseKey(d.PublicKey)
	if err != nil {
		return d, k, fmt.Errorf("PublicKey %q: %w", lease.Shorten(d.PublicKey), err)
	}
	// The all-zero key is no one's; the kernel would refuse it (or the
	// dataplane take it for "unset").
	if k == (dataplane.WGKey{}) {
		return d, k, fmt.Errorf("PublicKey %q is the all-zero key", d.PublicKey)
	}
	d.PublicKey = k.String()
	return d, k, nil
}
