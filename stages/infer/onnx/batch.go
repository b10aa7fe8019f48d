package onnx

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrNotONNX is a model file FreeBatch cannot read as an ONNX ModelProto.
var ErrNotONNX = errors.New("onnx: not an ONNX model")

// Field numbers of the ONNX protobuf messages FreeBatch walks
// (onnx/onnx.proto3).
const (
	modelGraph       = 7  // ModelProto.graph
	graphInitializer = 5  // GraphProto.initializer
	graphInput       = 11 // GraphProto.input
	graphOutput      = 12 // GraphProto.output
	valueName        = 1  // ValueInfoProto.name, TensorProto (initializer) name is 8
	initializerName  = 8
	valueType        = 2 // ValueInfoProto.type
	typeTensor       = 1 // TypeProto.tensor_type
	tensorShape      = 2 // TypeProto.Tensor.shape
	shapeDim         = 1 // TensorShapeProto.dim
	dimValue         = 1 // Dimension.dim_value
	dimParam         = 2 // Dimension.dim_param
)

// FreeBatch rewrites a model whose graph inputs and outputs declare a
// batch size of 1 that the graph itself does not depend on (its reshapes
// take the batch from the input's shape, as UltraFace's do): the first
// dimension of the inputs named and of every output becomes the symbolic
// "batch", so ONNX Runtime runs it on several images at once. Everything
// else is copied byte for byte.
func FreeBatch(model []byte, inputs []string) ([]byte, error) {
	return rewriteField(model, modelGraph, func(graph []byte) ([]byte, error) {
		inits, err := initializerNames(graph)
		if err != nil {
			return nil, err
		}
		free := func(v []byte) ([]byte, error) { return freeFirstDim(v) }
		graph, err = rewriteFieldIf(graph, graphInput, func(v []byte) bool {
			name := fieldString(v, valueName)
			return slices.Contains(inputs, name) && !inits[name]
		}, free)
		if err != nil {
			return nil, err
		}
		return rewriteField(graph, graphOutput, free)
	})
}

// freeFirstDim makes a ValueInfoProto's first dimension "batch" when it
// is 1.
func freeFirstDim(value []byte) ([]byte, error) {
	return rewriteField(value, valueType, func(t []byte) ([]byte, error) {
		return rewriteField(t, typeTensor, func(tt []byte) ([]byte, error) {
			return rewriteField(tt, tensorShape, func(shape []byte) ([]byte, error) {
				first := true
				return rewriteFieldIf(shape, shapeDim, func([]byte) bool {
					was := first
					first = false
					return was
				}, func(dim []byte) ([]byte, error) {
					if v, ok := fieldVarint(dim, dimValue); !ok || v != 1 {
						return dim, nil
					}
					out := protowire.AppendTag(nil, dimParam, protowire.BytesType)
					return protowire.AppendString(out, "batch"), nil
				})
			})
		})
	})
}

// initializerNames are the names of a graph's initializers (weights,
// which old models list among the inputs too).
func initializerNames(graph []byte) (map[string]bool, error) {
	names := map[string]bool{}
	err := eachField(graph, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == graphInitializer && typ == protowire.BytesType {
			names[fieldString(v, initializerName)] = true
		}
		return nil
	})
	return names, err
}

// eachField calls f with each field of a message (v: the field's bytes,
// for a length-delimited one its contents).
func eachField(msg []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return fmt.Errorf("%w: %w", ErrNotONNX, protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		if m < 0 {
			return fmt.Errorf("%w: %w", ErrNotONNX, protowire.ParseError(m))
		}
		v := msg[n : n+m]
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(v)
		}
		if err := f(num, typ, v); err != nil {
			return err
		}
		msg = msg[n+m:]
	}
	return nil
}

// rewriteField re-encodes every length-delimited field num of msg with f.
func rewriteField(msg []byte, num protowire.Number, f func([]byte) ([]byte, error)) ([]byte, error) {
	return rewriteFieldIf(msg, num, func([]byte) bool { return true }, f)
}

// rewriteFieldIf re-encodes the length-delimited fields num of msg for
// which want is true with f, and copies every other field as it is.
func rewriteFieldIf(msg []byte, num protowire.Number, want func([]byte) bool, f func([]byte) ([]byte, error)) ([]byte, error) {
	out := make([]byte, 0, len(msg)+16)
	for len(msg) > 0 {
		n0, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil, fmt.Errorf("%w: %w", ErrNotONNX, protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(n0, typ, msg[n:])
		if m < 0 {
			return nil, fmt.Errorf("%w: %w", ErrNotONNX, protowire.ParseError(m))
		}
		field := msg[:n+m]
		msg = msg[n+m:]
		if n0 != num || typ != protowire.BytesType {
			out = append(out, field...)
			continue
		}
		v, _ := protowire.ConsumeBytes(field[n:])
		if !want(v) {
			out = append(out, field...)
			continue
		}
		nv, err := f(v)
		if err != nil {
			return nil, err
		}
		out = protowire.AppendTag(out, num, protowire.BytesType)
		out = protowire.AppendBytes(out, nv)
	}
	return out, nil
}

// fieldString is the first string field num of msg ("" if none).
func fieldString(msg []byte, num protowire.Number) string {
	var s string
	found := false
	_ = eachField(msg, func(n protowire.Number, typ protowire.Type, v []byte) error {
		if n == num && typ == protowire.BytesType && !found {
			s, found = string(v), true
		}
		return nil
	})
	return s
}

// fieldVarint is the first varint field num of msg.
func fieldVarint(msg []byte, num protowire.Number) (uint64, bool) {
	var out uint64
	found := false
	_ = eachField(msg, func(n protowire.Number, typ protowire.Type, v []byte) error {
		if n == num && typ == protowire.VarintType && !found {
			out, _ = protowire.ConsumeVarint(v)
			found = true
		}
		return nil
	})
	return out, found
}
