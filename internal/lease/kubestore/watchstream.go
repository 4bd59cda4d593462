package kubestore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
)

// streamWatch reads a protobuf watch stream (length-prefixed WatchEvent
// frames) in one goroutine and hands each event, its object decoded slim,
// to ResultChan: what client-go's StreamWatcher and its decoder chain do,
// less a WatchEvent and a copy of the object per event (the frame buffer
// is reused; the slim decoder copies only the strings it keeps) and with
// a 64 KiB read buffer, so a burst of events is read with few system
// calls. Its events and errors are client-go's (the parity test compares
// them).
type streamWatch struct {
	body io.ReadCloser
	dec  runtime.Decoder
	ch   chan watch.Event
	done chan struct{}
	once sync.Once
}

// maxFrame bounds one watch event (kube-apiserver refuses objects over
// 1.5 MiB; a Node is kilobytes).
const maxFrame = 16 << 20

func newStreamWatch(body io.ReadCloser, dec runtime.Decoder) *streamWatch {
	w := &streamWatch{body: body, dec: dec, ch: make(chan watch.Event), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *streamWatch) ResultChan() <-chan watch.Event { return w.ch }

func (w *streamWatch) Stop() {
	w.once.Do(func() {
		close(w.done)
		w.body.Close()
	})
}

func (w *streamWatch) run() {
	defer close(w.ch)
	defer w.body.Close()
	br := bufio.NewReaderSize(w.body, 64<<10)
	var hdr [4]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			w.fail(err)
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			w.fail(fmt.Errorf("watch event of %d bytes", n))
			return
		}
		if cap(buf) < int(n) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			w.fail(err)
			return
		}
		typ, obj, err := w.decode(buf)
		if err != nil {
			w.fail(err)
			return
		}
		select {
		case w.ch <- watch.Event{Type: typ, Object: obj}:
		case <-w.done:
			return
		}
	}
}

// decode reads a WatchEvent message: type (1) and object (2, a
// RawExtension whose raw (1) is the enveloped object).
func (w *streamWatch) decode(b []byte) (watch.EventType, runtime.Object, error) {
	var typ string
	var raw []byte
	err := fields(b, func(num int, v []byte, _ uint64) error {
		switch num {
		case 1:
			typ = string(v)
		case 2:
			return fields(v, func(num int, v []byte, _ uint64) error {
				if num == 1 {
					raw = v
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("unable to decode watch event: %w", err)
	}
	switch t := watch.EventType(typ); t {
	case watch.Added, watch.Modified, watch.Deleted, watch.Error, watch.Bookmark:
	default:
		return "", nil, fmt.Errorf("got invalid watch event type: %v", typ)
	}
	obj, err := runtime.Decode(w.dec, raw)
	if err != nil {
		return "", nil, fmt.Errorf("unable to decode watch event: %v", err)
	}
	return watch.EventType(typ), obj, nil
}

// fail ends the stream as StreamWatcher does: quietly at its end (EOF, a
// closed connection, Stop), with an Error event otherwise.
func (w *streamWatch) fail(err error) {
	select {
	case <-w.done:
		return
	default:
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || utilnet.IsProbableEOF(err) || utilnet.IsTimeout(err) {
		return
	}
	st := apierrors.NewInternalError(fmt.Errorf("unable to decode an event from the watch stream: %v", err)).Status()
	select {
	case w.ch <- watch.Event{Type: watch.Error, Object: &st}:
	case <-w.done:
	}
}
