// Package infer is the infer stage: it runs an ONNX model (described by a
// model card) on decoded video frames or audio, and attaches the results
// (boxes, classes, text, speech segments) to the stream.
package infer
