package ipc

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Servers is a list of servers. It decodes itself element by element so that
// an array header claiming millions of entries costs nothing until the
// entries are really there: msgpack v5.4.1 preallocates struct slices to
// whatever length the input claims.
type Servers []Server

// DecodeMsgpack implements msgpack.CustomDecoder.
func (ss *Servers) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, (*[]Server)(ss))
}

// ServerStatsList is a list of per-server stats, decoded like Servers.
type ServerStatsList []ServerStats

// DecodeMsgpack implements msgpack.CustomDecoder.
func (sl *ServerStatsList) DecodeMsgpack(dec *msgpack.Decoder) error {
	return decodeList(dec, (*[]ServerStats)(sl))
}

// decodeList decodes a msgpack array into *dst, growing it only as elements
// actually decode.
func decodeList[T any](dec *msgpack.Decoder, dst *[]T) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	if n < 0 {
		*dst = nil
		return nil
	}
	if n > MaxServers {
		return fmt.Errorf("list of %d entries, limit %d", n, MaxServers)
	}
	*dst = (*dst)[:0]
	for i := 0; i < n; i++ {
		var v T
		if err := dec.Decode(&v); err != nil {
			return err
		}
		*dst = append(*dst, v)
	}
	return nil
}
