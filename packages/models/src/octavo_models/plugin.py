"""Entry-point plugin of octavo-models: model families and weight formats."""

from octavo.plugins import hookimpl

# HF ``architectures`` names served by one Llama-family implementation.
LLAMA_FAMILY = (
    "LlamaForCausalLM",  # Llama 1/2/3, CodeLlama, Yi, SmolLM
    "MistralForCausalLM",
    "Qwen2ForCausalLM",  # QKV bias
)


# HF ``architectures`` name -> the module that serves it (the class has the same name).
DECODER_FAMILIES = {
    "GPT2LMHeadModel": "gpt2",
    "OPTForCausalLM": "opt",
    "GPTJForCausalLM": "gptj",
    "GPTNeoXForCausalLM": "gpt_neox",  # Pythia
    "FalconForCausalLM": "falcon",
    "MptForCausalLM": "mpt",
}


@hookimpl
def register_models(register):
    for arch in LLAMA_FAMILY:
        register(arch, "octavo_models.llama:LlamaForCausalLM")
    register("QWenLMHeadModel", "octavo_models.qwen:QWenLMHeadModel")  # remote-code layout
    register("BaiChuanForCausalLM", "octavo_models.baichuan:BaiChuanForCausalLM")  # 7B
    register("BaichuanForCausalLM", "octavo_models.baichuan:BaichuanForCausalLM")  # 13B, 2
    for arch, module in DECODER_FAMILIES.items():
        register(arch, f"octavo_models.{module}:{arch}")


@hookimpl
def register_weight_formats(register):
    register("*.safetensors", "octavo_models.weights.safetensors_format:SafetensorsFormat")
    register("*.bin", "octavo_models.weights.torch_bin_format:TorchBinFormat")
    register("*.pt", "octavo_models.weights.torch_bin_format:TorchBinFormat")
    register("*.gguf", "octavo_models.weights.gguf_format:GGUFFormat")
