package leasetest

import (
	"testing"

	"github.com/weft-net/weft/internal/lease"
)

// FakeHarness runs the suite on a fresh lease.Fake (real clock).
func FakeHarness(t *testing.T) Harness {
	f := lease.NewFake(nil)
	return Harness{Store: f, Peer: FakePeer{f}}
}

// FakePeer is the Peer of a lease.Fake.
type FakePeer struct{ F *lease.Fake }

// SetNetworkConfig implements Peer.
func (p FakePeer) SetNetworkConfig(_ testing.TB, doc []byte) { p.F.SetNetworkConfig(doc) }

// PutLease implements Peer.
func (p FakePeer) PutLease(_ testing.TB, l lease.Lease) { p.F.Put(l) }

// PutRaw implements Peer.
func (p FakePeer) PutRaw(_ testing.TB, key string, value []byte) { p.F.PutRaw(key, value) }

// Delete implements Peer.
func (p FakePeer) Delete(t testing.TB, id lease.ID) {
	t.Helper()
	if !p.F.Delete(id) {
		t.Fatalf("fake: delete %s: no such key", id)
	}
}

// Expire implements Peer.
func (p FakePeer) Expire(t testing.TB, id lease.ID) {
	t.Helper()
	if !p.F.Expire(id) {
		t.Fatalf("fake: expire %s: no such lease (or a reservation)", id)
	}
}

// Compact implements Peer.
func (p FakePeer) Compact(testing.TB) { p.F.Compact() }

// Disconnect implements Peer.
func (p FakePeer) Disconnect(testing.TB) (reconnect func()) {
	p.F.Disconnect()
	return p.F.Reconnect
}
