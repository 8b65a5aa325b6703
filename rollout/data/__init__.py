"""Datasets: the record format (docs/design.md §2.1), a validating reader, the synthetic "shapes" generator
and the importer of the public STGR annotations. Nothing heavy is imported here.

Public entry points (import them from their modules):
- `records.Record`, `records.KeyFrame`, `records.decode_record`, `records.encode_record`
- `reader.read_records(path, check_media_files=True, dataset_dir=None) -> (list[Record], ReadReport)`
- `synth.generate_dataset(out_dir, train, eval, seed, difficulty, data_cfg, progress, workers)`,
  `synth.generate_split(...)`, `synth.make_sample(index, seed, split, difficulty, data_cfg)`,
  `synth.write_media(sample, out_dir)`, `synth.iter_samples(seed, difficulty, out_dir, ...)` (endless)
- `stgr.import_stgr(in_path, out_path, data_cfg, video_root, image_root) -> ImportReport`
- `scene.DIFFICULTIES`: the easy / medium / hard ladder
- `contact_sheet.make_contact_sheet(dataset_dirs, out)`
"""
