"""The reference article's sampling loops, transcribed faithfully (bugs included), for tests/bench.

Source: "Diffusion模型的微调和引导" (after the HF diffusion-models-class, unit 2); each loop
takes the article's objects as arguments instead of globals.
Do not "fix" these: they are the reference.
"""

import torch
import torchvision


def article_ddim_loop(unet, scheduler, x, num_inference_steps=40):
    """The article's minimal DDIM sampling loop."""
    scheduler.set_timesteps(num_inference_steps=num_inference_steps)
    for _i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            noise_pred = unet(model_input, t)["sample"]
        x = scheduler.step(noise_pred, t, x).prev_sample
    return x


def color_loss(images, target_color=(0.8, 0.4, 0.6)):
    """The article's colour loss: mean |image - target|, target mapped to (-1, 1)."""
    target = torch.tensor(target_color).to(images.device) * 2 - 1
    target = target[None, :, None, None]
    error = torch.abs(images - target).mean()
    return error


def article_color_loop(
    unet, scheduler, x, guidance_loss_scale=40, num_inference_steps=40, target_color=(0.8, 0.4, 0.6)
):
    """The article's colour-guided loop: the gradient goes through the UNet; step() twice."""
    scheduler.set_timesteps(num_inference_steps=num_inference_steps)
    for _i, t in enumerate(scheduler.timesteps):
        x = x.detach().requires_grad_()
        model_input = scheduler.scale_model_input(x, t)
        noise_pred = unet(model_input, t)["sample"]
        x0 = scheduler.step(noise_pred, t, x).pred_original_sample
        loss = color_loss(x0, target_color) * guidance_loss_scale
        cond_grad = -torch.autograd.grad(loss, x)[0]
        x = x.detach() + cond_grad
        x = scheduler.step(noise_pred, t, x).prev_sample
    return x.detach()


def article_tfms(image_size=224):
    """The article's CLIP augmentations (v1 transforms, applied to the whole batch at once)."""
    return torchvision.transforms.Compose(
        [
            torchvision.transforms.RandomResizedCrop(image_size),
            torchvision.transforms.RandomAffine(5),
            torchvision.transforms.RandomHorizontalFlip(),
            torchvision.transforms.Normalize(
                mean=(0.48145466, 0.4578275, 0.40821073),
                std=(0.26862954, 0.26130258, 0.27577711),
            ),
        ]
    )


def article_clip_loss(image, text_features, clip_model, tfms):
    """The article's clip_loss (it feeds x0 in [-1, 1] to the normalisation: a known bug)."""
    image_features = clip_model.encode_image(tfms(image))
    input_normed = torch.nn.functional.normalize(image_features.unsqueeze(1), dim=2)
    embed_normed = torch.nn.functional.normalize(text_features.unsqueeze(0), dim=2)
    dists = input_normed.sub(embed_normed).norm(dim=2).div(2).arcsin().pow(2).mul(2)
    return dists.mean()


def article_clip_loop(
    unet,
    scheduler,
    x,
    clip_model,
    tfms,
    text_features,
    guidance_scale=8,
    n_cuts=4,
    num_inference_steps=50,
):
    """The article's CLIP-guided loop: one CLIP pass per cut; alphas_cumprod[i] (loop index)."""
    scheduler.set_timesteps(num_inference_steps)
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            noise_pred = unet(model_input, t)["sample"]
        cond_grad = 0
        for _cut in range(n_cuts):
            x = x.detach().requires_grad_()
            x0 = scheduler.step(noise_pred, t, x).pred_original_sample
            loss = article_clip_loss(x0, text_features, clip_model, tfms) * guidance_scale
            cond_grad -= torch.autograd.grad(loss, x)[0] / n_cuts
        alpha_bar = scheduler.alphas_cumprod[i]
        x = x.detach() + cond_grad * alpha_bar.sqrt()
        x = scheduler.step(noise_pred, t, x).prev_sample
    return x.detach()
